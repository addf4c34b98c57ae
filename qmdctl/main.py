"""qmdctl entry point. Every command parses with `fastargs` and never imports typer or rich; the typer
app is only for --help, bare groups and unknown commands. Both are built from `qmdctl.spec`."""

from __future__ import annotations

import sys

from qmdctl import fastargs
from qmdctl.agent import wants_spec
from qmdctl.indexes import select_index
from qmdctl.invocation import print_spec, run_command, usage_failure
from qmdctl.spec import GROUP_HELP, find_command

_HELP = {"-h", "--help"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = select_index(argv)  # qmd's global --index NAME, anywhere: into $QMDD_INDEX
    except fastargs.UsageError as exc:
        return usage_failure(None, argv, str(exc))
    if argv[:1] in (["--version"], ["-v"]):  # qmd's -v/--version, before any command lookup
        from qmdd import __version__

        sys.stdout.write(f"qmdctl {__version__} (qmdd {__version__})\n")
        return 0
    if argv[:1] == ["--skill"]:  # qmd keeps `--skill` as an alias of `skill show`
        argv = ["skill", "show", *argv[1:]]
    argv = _command_first(argv)
    found = find_command(argv)
    if found is None or _HELP & set(found[1]):
        if found is None and _unknown_command(argv):
            words = argv[:2] if argv[0] in GROUP_HELP else argv[:1]
            return usage_failure(None, argv, f"no such command: {' '.join(words)!r}")
        from qmdctl.app import run_typer

        return run_typer(argv)
    command, rest = found
    if wants_spec(rest):
        # Before parsing: `qmdctl collection rename --emit-spec` needs no OLD NEW.
        return print_spec(command)
    try:
        args = fastargs.parse(command, rest)
    except fastargs.UsageError as exc:
        return usage_failure(command, rest, str(exc))
    return run_command(command, args)


def _command_first(argv: list[str]) -> list[str]:
    """qmd parses options wherever they stand: `qmdctl --json search x` and `qmdctl -n 5 search x` are
    `search x --json` and `search x -n 5`. Options before the command word move behind it."""
    if not argv or not argv[0].startswith("-") or _HELP & set(argv[:1]):
        return argv
    for i in range(1, len(argv)):
        if argv[i] == "--":
            break
        if not argv[i].startswith("-") and find_command(argv[i:]) is not None:
            return [*argv[i:], *argv[:i]]
    return argv


def _unknown_command(argv: list[str]) -> bool:
    """A command word qmdctl does not know (typer prints help for no words, a bare group, or --help)."""
    if not argv or argv[0].startswith("-") or _HELP & set(argv):
        return False
    return argv[0] not in GROUP_HELP or (len(argv) > 1 and not argv[1].startswith("-"))


if __name__ == "__main__":
    sys.exit(main())
