"""Running one parsed command (`fastargs` parses every command; the typer app only shows help):
pick the output, import the runner, map errors to exit codes. Stdlib only: on the hot path."""

from __future__ import annotations

import importlib
import os
import sys

from qmdctl.agent import DryRun, DryRunClient, env_flag, print_plan
from qmdctl.client import Client, new_trace_id
from qmdctl.render import Output, report_error
from qmdctl.spec import FORMATS, Command
from qmdd import __version__
from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

_SHORTHANDS = ("json", "ndjson", "csv", "md", "xml", "files")


class Invocation:
    """What a command runner gets: its parsed arguments, the output, and a lazily connected client
    (under --dry-run, one that raises `DryRun` with the first request instead of sending it)."""

    def __init__(self, command: Command, args: dict[str, Any], output: Output, *, trace_id: str | None = None,
                 dry_run: bool = False) -> None:
        self.command = command
        self.args = args
        self.output = output
        self.trace_id = trace_id or new_trace_id()
        self.dry_run = dry_run
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = (DryRunClient if self.dry_run else Client)(trace_id=self.trace_id)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def output_format(args: dict[str, Any]) -> str:
    """As qmd: --format, else a shorthand flag (--json ...); then ANEL's --output-format, else
    AGENT_OUTPUT_FORMAT, else text. A format that is not one is a usage error wherever it was given."""
    for given in (args.get("format"), args.get("output_format"), os.environ.get("AGENT_OUTPUT_FORMAT")):
        if given and given not in FORMATS:
            raise QmddError(ErrorCode.USAGE_ERROR, f"unknown format {given!r}; choose one of {', '.join(FORMATS)}")
    shorthand = next((name for name in _SHORTHANDS if args.get(name)), None)
    fmt = args.get("format") or shorthand or args.get("output_format") or os.environ.get("AGENT_OUTPUT_FORMAT")
    return "text" if fmt in (None, "", "cli") else str(fmt)


def requested_format(argv: list[str]) -> str:
    """The format asked for on a command line that could not be parsed, so that its usage error comes
    in that format too; text when none can be made out."""
    args: dict[str, Any] = {}
    words = iter(argv[: argv.index("--")] if "--" in argv else argv)
    for word in words:
        flag, has_value, value = word.partition("=")
        if flag in ("--format", "--output-format"):
            args[flag[2:].replace("-", "_")] = value if has_value else next(words, None)
        elif word[2:] in _SHORTHANDS and word.startswith("--"):
            args[word[2:]] = True
    try:
        return output_format(args)
    except QmddError:
        return "text"


def given_args(command: Command, args: dict[str, Any]) -> dict[str, Any]:
    """The command's own arguments that differ from their defaults (for NDJSON metadata)."""
    given = {}
    for opt in command.opts:
        value = args.get(opt.name)
        if value is not None and value is not False and not (opt.default is not None and value == opt.default):
            given[opt.name] = value
    return given


def run_command(command: Command, args: dict[str, Any]) -> int:
    """Run the command's runner with its parsed arguments and return the exit status; or print the
    command's spec (--emit-spec), or what it would send (--dry-run)."""
    output = Output("text")
    invocation = Invocation(command, args, output, dry_run=bool(args.get("dry_run")) or env_flag("AGENT_DRY_RUN"))
    output.meta = {"command": command.name, "trace_id": invocation.trace_id, "qmdctl_version": __version__,
                   "args": given_args(command, args)}
    try:
        output.fmt = output_format(args)
        if args.get("emit_spec") or env_flag("AGENT_EMIT_SPEC"):
            return print_spec(command)
        if invocation.dry_run and command.effect:
            raise DryRun({"action": command.effect})
        module, _, function = command.runner.partition(":")
        runner = getattr(importlib.import_module(f"qmdctl.commands.{module}"), function)
        status = int(runner(invocation) or 0)
        output.start()  # NDJSON: the metadata record even when there was nothing else to write
        return status
    except DryRun as dry:
        return print_plan(output, command, dry.plan, invocation.client)
    except QmddError as err:
        return report_error(output, err, command.name, invocation.trace_id)
    except BrokenPipeError:
        # `qmdctl search … | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, not a typed failure: still problem details, never a raw traceback
        return report_error(output, QmddError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:500]),
                            command.name, invocation.trace_id)
    finally:
        invocation.close()


def usage_failure(command: Command | None, argv: list[str], message: str) -> int:
    """A command line that cannot be parsed: USAGE_ERROR (exit 2) as typed problem details, in the format
    the line asked for (NDJSON: after the metadata record), like every other error."""
    output = Output(requested_format(argv))
    name = command.name if command else ""
    trace_id = new_trace_id()
    output.meta = {"command": name, "trace_id": trace_id, "qmdctl_version": __version__, "args": {}}
    where = f"qmdctl {name} --help".replace("  ", " ")
    err = QmddError(ErrorCode.USAGE_ERROR, message, hints=(f"See `{where}`.",))
    return report_error(output, err, name, trace_id)


def print_spec(command: Command) -> int:
    """--emit-spec: the command's JSON Schema document on stdout (never contacts the daemon)."""
    from qmdctl.emitspec import command_spec, dumps

    sys.stdout.write(dumps(command_spec(command)))
    return 0
