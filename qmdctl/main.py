"""qmdctl entry point. Hot commands parse with argparse and never import typer or rich; everything
else (and every --help) goes through the typer app. Both are built from `qmdctl.spec`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from qmdctl.client import Client
from qmdctl.render import Output, report_error
from qmdctl.spec import FORMATS, OUTPUT_OPTS, Command, find_command
from qmdd.protocol import ErrorCode, QmddError

_SHORTHANDS = ("json", "ndjson", "csv", "md", "files")


@dataclass
class Invocation:
    """What a command runner gets: its parsed arguments, the output, and a lazily connected client."""

    command: Command
    args: dict[str, Any]
    output: Output
    _client: Client | None = field(default=None, repr=False)

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


def build_argparser(command: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmdctl " + " ".join(command.path), add_help=False,
                                     allow_abbrev=False)
    for opt in (*command.opts, *(OUTPUT_OPTS if command.output else ())):
        if not opt.flags:
            nargs = opt.nargs
            if opt.kind == "list" and nargs is None:
                nargs = "*"
            parser.add_argument(opt.name, nargs=nargs, default=opt.default)
        elif opt.kind == "flag":
            parser.add_argument(*opt.flags, dest=opt.name, action="store_true")
        elif opt.kind == "list":
            parser.add_argument(*opt.flags, dest=opt.name, action="append", default=opt.default)
        else:
            kind = {"int": int, "float": float}.get(opt.kind, str)
            parser.add_argument(*opt.flags, dest=opt.name, type=kind, default=opt.default)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    found = find_command(argv)
    if found is not None and found[0].hot and not {"-h", "--help"} & set(found[1]):
        command, rest = found
        args = vars(build_argparser(command).parse_args(rest))
        return run_command(command, args)
    from qmdctl.app import run_typer

    return run_typer(argv)


if __name__ == "__main__":
    sys.exit(main())
