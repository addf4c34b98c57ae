"""`qmdctl completion bash|zsh|fish`: each script parses in its shell, and a completion request made the way
the shell makes it returns the commands, subcommands, options and values the command table has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qmdctl.spec import COMMANDS, FORMATS

BASH_REQUEST = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()
_qmdctl
printf '%s\\n' "${COMPREPLY[@]}"
"""
# zsh's compadd and _files exist only inside a completion widget: stand-ins print what they are given.
ZSH_REQUEST = """
compdef() { :; }
source "$1"; shift
compadd() { [[ $1 == -- ]] && shift; for w in "$@"; do [[ $w == ${words[CURRENT]}* ]] && print -r -- $w; done; }
_files() { print -r -- '<files>'; }
words=("$@"); CURRENT=${#words}
_qmdctl
true
"""


def script(shell: str, tmp_path: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "qmdctl.main", "completion", shell], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "QMDD_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    path = tmp_path / f"qmdctl.{shell}"
    path.write_text(proc.stdout)
    assert not (tmp_path / "home").exists()  # no daemon was contacted
    return path


def complete(shell: str, path: Path, *words: str) -> list[str]:
    if shell == "fish":
        line = " ".join(("qmdctl", *words))
        argv = ["fish", "--no-config", "-c", f"source {path}; complete -C {line!r}"]
    else:
        argv = [shell, "-c", BASH_REQUEST if shell == "bash" else ZSH_REQUEST, shell, str(path), "qmdctl", *words]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return sorted(line.split("\t")[0] for line in proc.stdout.splitlines() if line)


SHELLS = [pytest.param(s, marks=pytest.mark.skipif(shutil.which(s) is None, reason=f"{s} is not installed"))
          for s in ("bash", "zsh", "fish")]


@pytest.mark.parametrize("shell", SHELLS)
def test_script_parses(shell: str, tmp_path: Path) -> None:
    path = script(shell, tmp_path)
    subprocess.run([shell, "-n", str(path)], check=True, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_requests(shell: str, tmp_path: Path) -> None:
    path = script(shell, tmp_path)
    fish = shell == "fish"
    top = {c.path[0] for c in COMMANDS}
    assert set(complete(shell, path, "")) >= top
    assert complete(shell, path, "se") == ["search", "service"]
    assert complete(shell, path, "collection", "r") == ["remove", "rename", "rm"]
    assert complete(shell, path, "skill", "") == ["install", "show"]
    assert complete(shell, path, "search", "tar", "--li") == ["--limit", "--line-numbers"]
    # A value after an option is skipped over: the command is still `search`.
    assert "--format" in complete(shell, path, "search", "-c", "notes", "tar", "--for")
    assert complete(shell, path, "search", "--format", "j") == ["json"]
    assert complete(shell, path, "completion", "") == ["bash", "fish", "zsh"]
    assert complete(shell, path, "mcp", "s") == ["stop"]
    assert "--force" in complete(shell, path, "skill", "install", "--f")
    if not fish:  # fish lists long options only for `--`; bash and zsh offer the top-level ones at `-`
        assert complete(shell, path, "--") == ["--help", "--skill", "--version"]
        # A path argument gets the shell's file completion (bash: nothing, so `-o default` takes over).
        assert complete(shell, path, "get", "") == ([] if shell == "bash" else ["<files>"])


def test_every_command_and_option_is_offered(tmp_path: Path) -> None:
    path = script("bash", tmp_path)
    for command in COMMANDS:
        options = complete("bash", path, *command.path, "-")
        flags = {f for opt in command.all_opts() for f in opt.flags}
        assert flags <= set(options), command.name
        if len(command.path) == 2:
            assert command.path[1] in complete("bash", path, command.path[0], ""), command.name
    assert complete("bash", path, "ls", "--format", "") == sorted(FORMATS)


def test_unknown_shell(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "qmdctl.main", "completion", "tcsh"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "QMDD_HOME": str(tmp_path / "home")})
    assert proc.returncode == 10 and "bash, zsh, fish" in proc.stderr
