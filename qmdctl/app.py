"""The typer app for --help (and bare groups): generated from `qmdctl.spec`,
so it accepts exactly the syntax `qmdctl.fastargs` does and hands `run_command` the same arguments."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from qmdctl.invocation import run_command
from qmdctl.spec import COMMANDS, GROUP_HELP, Command, Opt

_TYPES: dict[str, Any] = {"str": str | None, "int": int | None, "float": float | None, "flag": bool,
                          "list": list[str] | None}


def _parameter(opt: Opt) -> inspect.Parameter:
    annotation = _TYPES[opt.kind]
    if opt.flags:
        default: Any = typer.Option(opt.default, *opt.flags, help=opt.help, show_default=opt.kind != "flag")
    else:
        many = opt.nargs == "+" or opt.kind == "list"
        annotation = list[str] if many else (str if opt.nargs is None else str | None)
        required = opt.nargs in (None, "+") and opt.default is None
        default = typer.Argument(... if required else opt.default, help=opt.help, show_default=not required)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _callback(command: Command) -> Any:
    opts = command.all_opts()

    def callback(**kwargs: Any) -> None:
        raise typer.Exit(run_command(command, kwargs))

    params = [_parameter(o) for o in opts]
    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__name__ = "_".join(command.path).replace("-", "_")
    callback.__doc__ = command.help
    return callback


def build_app() -> typer.Typer:
    # Help texts are plain text with literal brackets (COLLECTION[/path]): no rich markup parsing.
    app = typer.Typer(name="qmdctl", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                      help="qmdctl: keyword, vector and hybrid search of your markdown, by the warm qmdd daemon.\n\n"
                           "Global options (before or after the command): --index NAME uses a named index "
                           "(its own data and daemon; `qmdctl init` makes one for a project folder); "
                           "-v/--version prints the version.",
                      context_settings={"help_option_names": ["-h", "--help"]})
    groups: dict[str, typer.Typer] = {}
    for command in COMMANDS:
        target = app
        if len(command.path) == 2:
            group = command.path[0]
            if group not in groups:
                groups[group] = typer.Typer(no_args_is_help=True, help=GROUP_HELP.get(group, ""),
                                            rich_markup_mode=None)
                app.add_typer(groups[group], name=group)
            target = groups[group]
        callback = _callback(command)
        target.command(command.path[-1], help=command.help)(callback)
        for alias in command.aliases:
            target.command(alias, help=command.help, hidden=True)(callback)
    return app


def run_typer(argv: list[str]) -> int:
    try:
        build_app()(args=argv, prog_name="qmdctl", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
