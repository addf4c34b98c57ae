"""qmdctl entry point. Hot commands parse with `fastargs` and never import typer or rich; everything
else (and every --help) goes through the typer app. Both are built from `qmdctl.spec`."""

from __future__ import annotations

import importlib
import os
import sys

from qmdctl import fastargs
from qmdctl.client import Client
from qmdctl.render import Output, report_error
from qmdctl.spec import FORMATS, Command, find_command
from qmdd.protocol import ErrorCode, QmddError

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

_SHORTHANDS = ("json", "ndjson", "csv", "md", "files")


class Invocation:
    """What a command runner gets: its parsed arguments, the output, and a lazily connected client."""

    def __init__(self, command: Command, args: dict[str, Any], output: Output) -> None:
        self.command = command
        self.args = args
        self.output = output
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def output_format(args: dict[str, Any]) -> str:
    for name in _SHORTHANDS:
        if args.get(name):
            return name
    fmt = args.get("format") or os.environ.get("AGENT_OUTPUT_FORMAT") or "text"
    if fmt not in FORMATS:
        raise QmddError(ErrorCode.INVALID_INPUT, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return str(fmt)


def run_command(command: Command, args: dict[str, Any]) -> int:
    """Shared by both front ends: pick the output, import the runner, map errors to exit codes."""
    output = Output("text")
    invocation: Invocation | None = None
    try:
        output.fmt = output_format(args)
        invocation = Invocation(command, args, output)
        module, _, function = command.runner.partition(":")
        runner = getattr(importlib.import_module(f"qmdctl.commands.{module}"), function)
        return int(runner(invocation) or 0)
    except QmddError as err:
        trace = invocation._client.trace_id if invocation and invocation._client else None
        return report_error(output, err, " ".join(command.path), trace)
    except BrokenPipeError:
        # `qmdctl search … | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if invocation is not None:
            invocation.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    found = find_command(argv)
    if found is not None and found[0].hot and not {"-h", "--help"} & set(found[1]):
        command, rest = found
        try:
            args = fastargs.parse(command, rest)
        except fastargs.UsageError as exc:
            sys.stderr.write(f"usage error: qmdctl {' '.join(command.path)}: {exc}\n"
                             f"  hint: see `qmdctl {' '.join(command.path)} --help`\n")
            return 2
        return run_command(command, args)
    from qmdctl.app import run_typer

    return run_typer(argv)


if __name__ == "__main__":
    sys.exit(main())
