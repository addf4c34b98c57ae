"""qmdctl entry point. Hot commands parse with `fastargs` and never import typer or rich; everything
else (and every --help) goes through the typer app. Both are built from `qmdctl.spec`."""

from __future__ import annotations

import sys

from qmdctl import fastargs
from qmdctl.agent import wants_spec
from qmdctl.invocation import print_spec, run_command
from qmdctl.render import terminal_safe
from qmdctl.spec import find_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    found = find_command(argv)
    if found is not None and not {"-h", "--help"} & set(found[1]) and wants_spec(found[1]):
        # Before parsing: `qmdctl collection rename --emit-spec` needs no OLD NEW, and no typer.
        return print_spec(found[0])
    if found is not None and found[0].hot and not {"-h", "--help"} & set(found[1]):
        command, rest = found
        try:
            args = fastargs.parse(command, rest)
        except fastargs.UsageError as exc:
            # The message echoes the argument it could not parse, which may carry escape sequences.
            sys.stderr.write(f"usage error: qmdctl {' '.join(command.path)}: {terminal_safe(str(exc))}\n"
                             f"  hint: see `qmdctl {' '.join(command.path)} --help`\n")
            return 2
        return run_command(command, args)
    from qmdctl.app import run_typer

    return run_typer(argv)


if __name__ == "__main__":
    sys.exit(main())
