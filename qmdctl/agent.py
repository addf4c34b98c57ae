"""Agent conventions shared by every command: the AGENT_* switches and `--dry-run`.

Stdlib only: on the hot path. A dry run gives the runner a client that never starts a daemon: its first
`call` checks the request against the protocol's declaration and raises `DryRun` with the method and
params it would have sent; `run_command` catches that and prints it instead of a result. A request that
changes something (DRY_RUN_METHODS: collection add/remove/rename, context add/rm, model use, plugin
remove/enable/disable/attach/detach) is also sent, with `dry_run: true`, to a daemon that is already
running: it makes the checks only it can (the folder exists and is not a duplicate, the collection,
model or context exists) and changes nothing; a failed check is the command's error, as it would be
without --dry-run. With no daemon running, nothing is started (a dry run leaves no trace), and the plan
is checked locally only (it has no `checked: true`).
"""

from __future__ import annotations

import json
import os

from qmdctl.client import Client
from qmdd.protocol.wire import DRY_RUN_METHODS, validate_params

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.client import ItemSink
    from qmdctl.render import Output
    from qmdctl.spec import Command

_TRUE = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """AGENT_EMIT_SPEC=1, AGENT_DRY_RUN=true, ...: set to 1/true/yes/on (any case)."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def wants_spec(argv: list[str]) -> bool:
    """--emit-spec among a command's arguments (not after `--`), or AGENT_EMIT_SPEC set."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--emit-spec" in options or env_flag("AGENT_EMIT_SPEC")


class DryRun(Exception):
    """What a command would do: {"method", "params"} of its request, or {"action"} for the others."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__(plan)
        self.plan = plan


class DryRunClient(Client):
    """A client that validates and reports its first request instead of sending it; a request that
    changes something also goes, with `dry_run: true`, to a daemon already running (never started)."""

    def try_connect(self) -> bool:
        raise DryRun({"action": f"connect to the daemon on {self.socket_path}"})

    def connect(self, autostart: bool = True) -> Client:
        if self._sock is not None:  # connected by `call`, to a daemon that was running
            return self
        raise DryRun({"action": f"connect to the daemon on {self.socket_path}"
                      + (", starting it if it is not running" if autostart else "")})

    def call(self, method: str, params: dict[str, Any] | None = None, on_item: ItemSink | None = None) -> Any:
        validate_params(method, params or {})  # the daemon's own check: a bad request fails here too
        # Bytes (a plugin's module) are shown by size: a plan is printed, often as JSON.
        shown = {k: f"<{len(v):,} bytes>" if isinstance(v, bytes) else v for k, v in (params or {}).items()}
        plan: dict[str, Any] = {"method": method, "params": shown}
        # Client.try_connect, not ours: it connects to a running daemon only, and starts none.
        if method in DRY_RUN_METHODS and Client.try_connect(self):
            answer = Client.call(self, method, {**(params or {}), "dry_run": True})  # a failed check raises
            plan.update(checked=True, would=answer.get("would"))
        raise DryRun(plan)


def print_plan(output: Output, command: Command, plan: dict[str, Any], client: Client) -> int:
    """Print a dry run's plan: JSON for json/ndjson, readable text otherwise. Exits 0."""
    doc: dict[str, Any] = {"dry_run": True, "command": command.name, **plan,
                           "socket": client.socket_path, "trace_id": client.trace_id}
    if client.identity:
        import hashlib

        doc["identity"] = "sha256:" + hashlib.sha256(client.identity.encode("utf-8", "surrogatepass")
                                                     ).hexdigest()[:8]
    if output.fmt == "json":
        output.json(doc)
    elif output.fmt == "ndjson":
        output.record("result", doc)
    else:
        output.line(f"dry run: qmdctl {command.name} (nothing was changed; trace id {client.trace_id})")
        if "method" in plan:
            output.line(f"  would send: {plan['method']} to the daemon on {client.socket_path}"
                        " (started if not running)")
            output.line(f"  params: {json.dumps(plan['params'], ensure_ascii=False, sort_keys=True)}")
            if plan.get("checked"):
                output.line("  checked by the running daemon: it would "
                            + json.dumps(plan.get("would"), ensure_ascii=False, sort_keys=True))
            elif plan["method"] in DRY_RUN_METHODS:
                output.line("  checked here only: no daemon is running to check it against the index")
        else:
            output.line(f"  would {plan['action']}")
            output.line(f"  socket: {client.socket_path}")
    return 0
