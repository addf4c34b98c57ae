"""A small argument parser for every command, driven by `qmdctl.spec`.

argparse costs several milliseconds to import and build, a noticeable share of a 50 ms budget for a
whole `qmdctl search`; the command table already says everything a parser needs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.spec import Command, Opt


class UsageError(Exception):
    """Bad command-line syntax (exit status 2, as argparse and typer use)."""


def _convert(opt: Opt, flag: str, raw: str) -> Any:
    if opt.kind not in ("int", "float"):
        return raw
    try:
        value: float = int(raw) if opt.kind == "int" else float(raw)
    except ValueError:
        raise UsageError(f"{flag} expects {'an integer' if opt.kind == 'int' else 'a number'}, got {raw!r}") from None
    high = opt.high if opt.high is not None else _LARGEST
    if value != value or (opt.low is not None and value < opt.low) or value > high or value < -_LARGEST:
        raise UsageError(f"{flag} must be {_bounds(opt.low, opt.high)}, got {raw!r}")
    return value


# What any number may be without a bound of its own: finite, and within what the wire carries exactly.
_LARGEST = 2**53


def _bounds(low: float | None, high: float | None) -> str:
    if high is None:
        return "a finite number" if low is None else f"at least {low}"
    return f"at most {high}" if low is None else f"between {low} and {high}"


def _looks_negative_number(arg: str) -> bool:
    return arg[1:].replace(".", "", 1).isdigit()


def parse(command: Command, argv: list[str]) -> dict[str, Any]:
    opts = command.all_opts()
    by_flag = {flag: opt for opt in opts for flag in opt.flags}
    values: dict[str, Any] = {o.name: (False if o.kind == "flag" else o.default) for o in opts}
    free: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            free.extend(rest)
            break
        if not arg.startswith("-") or arg == "-" or _looks_negative_number(arg):
            free.append(arg)
            continue
        flag, has_inline, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in by_flag and not flag.startswith("--") and flag[:2] in by_flag:
            flag, has_inline, inline = flag[:2], "=", flag[2:]  # -n5
        opt = by_flag.get(flag)
        if opt is None:
            raise UsageError(f"no such option: {flag}")
        if opt.kind == "flag":
            if has_inline:
                raise UsageError(f"{flag} takes no value")
            values[opt.name] = True
            continue
        raw = inline if has_inline else next(rest, None)
        if raw is None:
            raise UsageError(f"{flag} needs a value")
        value = _convert(opt, flag, raw)
        if opt.kind == "list":
            values[opt.name] = [*(values[opt.name] or []), value]
        else:
            values[opt.name] = value
    for opt in (o for o in opts if not o.flags):
        if opt.nargs == "+" or (opt.kind == "list" and opt.nargs is None):
            if not free and opt.nargs == "+":
                raise UsageError(f"missing {opt.name.upper()} ({opt.help})")
            values[opt.name], free = free, []
        elif free:
            values[opt.name] = free.pop(0)
        elif opt.nargs is None and opt.default is None:
            raise UsageError(f"missing {opt.name.upper()} ({opt.help})")
    if free:
        raise UsageError(f"unexpected argument(s): {' '.join(free)}")
    return values
