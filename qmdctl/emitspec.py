"""`--emit-spec`: a command's machine-readable contract, for agents.

The input schema is generated from the command table (`qmdctl.spec`); the output schema of its
`--format json` output, the request it sends and the error codes it can return are hand-written in
`qmdd/protocol/schemas/<command>.json` (with `_problem.json` and `_ndjson.json` shared by all; the
daemon's OpenAPI document is built from the same files), and each error code is expanded from the
protocol's table. Imported only when a spec is asked for.
"""

from __future__ import annotations

import json
from typing import Any

from qmdctl.spec import FORMATS, Command, Opt
from qmdd.protocol.errors import ERRORS, ErrorCode
from qmdd.protocol.schemas import load_schema

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SPEC_VERSION = 1

_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"}, "flag": {"type": "boolean"},
    "list": {"type": "array", "items": {"type": "string"}},
}

ENVIRONMENT = {
    "AGENT_OUTPUT_FORMAT": f"Default --format ({'|'.join(FORMATS)}).",
    "AGENT_EMIT_SPEC": "1: as --emit-spec.",
    "AGENT_DRY_RUN": "1: as --dry-run.",
    "AGENT_TRACE_ID": "Trace id sent with every request, logged by the daemon and printed in NDJSON metadata "
                      "and problem details (default: 16 random hex digits per invocation).",
    "AGENT_IDENTITY_TOKEN": "Opaque caller identity passed along in every request; the daemon logs only "
                            "sha256:<first 8 hex digits of its hash>, never the token.",
}


DRY_RUN_OUTPUT: dict[str, Any] = {
    "title": "What --dry-run prints with --format json (the NDJSON result payload too)",
    "type": "object",
    "required": ["dry_run", "command", "socket", "trace_id"],
    "properties": {
        "dry_run": {"const": True}, "command": {"type": "string"},
        "method": {"type": "string", "description": "The request it would send (see `rpc`)."},
        "params": {"type": "object", "description": "Its params, checked against the protocol's declaration."},
        "action": {"type": "string", "description": "What it would do, for commands that do more than one request."},
        "checked": {"const": True, "description": "A running daemon made the checks only it can (the folder "
                    "exists and is no duplicate; the collection, model or context exists) and changed nothing."},
        "would": {"type": "object", "description": "What that daemon would have done."},
        "before": {"type": "string", "description": "What the command would do before its request."},
        "socket": {"type": "string"}, "trace_id": {"type": "string"},
        "identity": {"type": "string", "pattern": "^sha256:[0-9a-f]{8}$"},
    },
    "oneOf": [{"required": ["method", "params"]}, {"required": ["action"]}],
    "additionalProperties": False,
}


def option_schema(opt: Opt) -> dict[str, Any]:
    schema = dict(_TYPES[opt.kind])
    if not opt.flags and opt.nargs == "+":
        schema = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    if opt.name == "format":
        schema["enum"] = list(FORMATS)
    if opt.low is not None:
        schema["minimum"] = opt.low
    if opt.high is not None:
        schema["maximum"] = opt.high
    if opt.help:
        schema["description"] = opt.help
    if opt.kind == "flag" or opt.default is not None:
        schema["default"] = False if opt.kind == "flag" else opt.default
    if opt.flags:
        schema["x-flags"] = list(opt.flags)
    else:
        schema["x-positional"] = opt.nargs or "1"
    return schema


def required(opt: Opt) -> bool:
    return not opt.flags and opt.nargs in (None, "+") and opt.default is None


def input_schema(command: Command) -> dict[str, Any]:
    """Arguments and options as one object, keyed by their names (positional first, in order)."""
    opts = command.all_opts()
    return {
        "$schema": DRAFT,
        "title": f"qmdctl {command.name} arguments",
        "type": "object",
        "properties": {opt.name: option_schema(opt) for opt in opts},
        "required": [opt.name for opt in opts if required(opt)],
        "additionalProperties": False,
    }


def usage(command: Command) -> str:
    words = ["qmdctl", command.name, "[OPTIONS]"]
    for opt in command.opts:
        if not opt.flags:
            name = opt.name.upper()
            words.append(f"{name}..." if opt.nargs == "+" else f"[{name}]" if opt.nargs == "?" else name)
    return " ".join(words)


def error_entry(code: ErrorCode) -> dict[str, Any]:
    spec = ERRORS[code]
    return {"code": str(code), "status": spec.status, "title": spec.title, "exit_code": spec.exit_code,
            "hints": list(spec.hints)}


def problem_schema() -> dict[str, Any]:
    schema = {"$schema": DRAFT, **load_schema("_problem")}
    schema["properties"]["code"]["enum"] = [str(code) for code in ErrorCode]
    return schema


def ndjson_schema(command: Command, result: dict[str, Any]) -> dict[str, Any]:
    """A record of the NDJSON stream, with this command's name in the metadata and its result payload."""
    schema = {"$schema": DRAFT, **load_schema("_ndjson")}
    metadata = schema["allOf"][0]["then"]["properties"]["payload"]
    metadata["properties"]["command"] = {"const": command.name}
    schema["allOf"].append({"if": {"properties": {"type": {"const": "result"}}},
                            "then": {"properties": {"payload": result}}})
    return schema


def command_spec(command: Command) -> dict[str, Any]:
    doc = load_schema(command.slug)
    output = {"$schema": DRAFT, **doc["output"]}
    result = doc.get("result") or (doc["output"].get("items") if doc["output"].get("type") == "array"
                                   else doc["output"])
    # Every command can fail to parse its command line.
    errors = sorted({ErrorCode.USAGE_ERROR, *(ErrorCode(c) for c in doc["errors"])}, key=lambda c: ERRORS[c].exit_code)
    spec: dict[str, Any] = {
        "spec_version": SPEC_VERSION,
        "command": command.name,
        "description": command.help,
        "aliases": list(command.aliases),
        "usage": usage(command),
        "rpc": doc["rpc"],
        "input": input_schema(command),
        "output": output,
    }
    if command.output:
        spec["ndjson"] = ndjson_schema(command, result)
    spec["dry_run_output"] = {"$schema": DRAFT, **DRY_RUN_OUTPUT}
    spec["errors"] = [error_entry(code) for code in errors]
    spec["error_output"] = problem_schema()
    spec["exit_codes"] = {"0": "OK", **{str(ERRORS[c].exit_code): str(c) for c in errors}}
    spec["environment"] = ENVIRONMENT
    return spec


def dumps(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
