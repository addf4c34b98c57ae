"""The hot-path parser and the typer app accept the same syntax, both generated from the spec."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qmdctl import fastargs
from qmdctl.app import build_app
from qmdctl.main import main
from qmdctl.spec import COMMANDS, Command, find_command


def parse(*argv: str) -> dict[str, object]:
    found = find_command(list(argv))
    assert found is not None
    return fastargs.parse(*found)


def test_search_flags_in_every_spelling() -> None:
    args = parse("search", "tar", "extract", "-n", "3", "-c", "a", "--collection=b", "--json", "--min-score", "0.5")
    assert args["query"] == ["tar", "extract"]
    assert (args["limit"], args["collection"], args["json"], args["min_score"]) == (3, ["a", "b"], True, 0.5)
    assert parse("search", "x", "-n5")["limit"] == 5
    assert parse("search", "--", "-v", "--json")["query"] == ["-v", "--json"]
    assert parse("search", "-5", "degrees")["query"] == ["-5", "degrees"]
    assert parse("search", "x")["limit"] is None and parse("search", "x")["explain"] is False


def test_positionals_and_aliases() -> None:
    assert parse("get", "notes/a.md:10:5", "--from", "3")["target"] == "notes/a.md:10:5"
    assert parse("multi-get", "a.md", "b/*.md")["patterns"] == ["a.md", "b/*.md"]
    assert parse("ls")["target"] is None
    assert find_command(["collection", "rm", "x"]) is not None
    assert find_command(["nope"]) is None


@pytest.mark.parametrize("argv, message", [
    (("search",), "missing QUERY"),
    (("search", "x", "--bogus"), "no such option"),
    (("search", "x", "-n"), "needs a value"),
    (("search", "x", "-n", "many"), "expects an integer"),
    (("search", "x", "--json=yes"), "takes no value"),
    (("get", "a", "b"), "unexpected argument"),
])
def test_usage_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(fastargs.UsageError, match=message):
        parse(*argv)


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "x", "--bogus"]) == 2
    assert "no such option" in capsys.readouterr().err


def test_typer_app_has_every_command_and_alias() -> None:
    runner = CliRunner()
    app = build_app()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        result = runner.invoke(app, [*command.path, "--help"])
        assert result.exit_code == 0, (command.path, result.output)
        for opt in command.opts:
            for flag in opt.flags:
                assert flag in result.output, (command.path, flag)
    assert runner.invoke(app, ["collection", "rm", "--help"]).exit_code == 0


@pytest.mark.parametrize("argv", [
    ("search", "tar", "extract", "-n", "3", "-c", "a", "--collection=b", "--json", "--min-score", "0.5"),
    ("query", "x", "--no-rerank", "--candidates", "7"),
    ("multi-get", "a.md", "b/*.md", "-l", "3"),
    ("get", "notes/a.md:10:5", "--from", "3"),
    ("ls",),
    ("context", "add", "qmd://notes/", "some text"),
    ("collection", "add", "dir", "--mask", "*.md", "--mask", "*.txt", "--no-update"),
])
def test_both_front_ends_hand_the_runner_the_same_arguments(argv: tuple[str, ...],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import qmdctl.app

    handed: list[dict[str, object]] = []

    def run_command(command: Command, args: dict[str, object]) -> int:
        handed.append(args)
        return 0

    monkeypatch.setattr(qmdctl.app, "run_command", run_command)
    assert CliRunner().invoke(build_app(), list(argv)).exit_code == 0
    assert handed == [parse(*argv)]


def test_hot_path_imports_stay_lean() -> None:
    """Deterministic guard for the qmdctl latency budget: the hot commands must not import these
    (typing alone costs ~10 ms per call, typer ~80 ms)."""
    import subprocess
    import sys

    code = ("import sys, qmdctl.main, qmdctl.commands.search, qmdctl.commands.docs, qmdctl.commands.admin\n"
            "editable = any('__editable__' in m for m in sys.modules)\n"
            "heavy = ('typing', 'typer', 'rich', 'argparse', 'pathlib', 'dataclasses', 'trio', 'numpy',\n"
            "         'jsonschema', 'qmdctl.emitspec', 'hashlib')\n"
            "print(int(editable), *(m for m in heavy if m in sys.modules))")
    editable, *loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.split()
    # An editable install's import hook pulls in pathlib before any of our code runs.
    assert set(loaded) <= ({"pathlib"} if editable == "1" else set()), loaded
