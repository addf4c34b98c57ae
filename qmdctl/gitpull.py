"""`qmdctl update --pull`: `git pull --ff-only` in each collection's git work tree before the rescan.

Run here, in the client, not in the daemon: a pull needs the user's credentials (ssh agent, credential
helper), and nothing that reaches the daemon (HTTP, MCP) can make it run a network command. git runs
from an argument list (no shell), with no terminal to prompt on, a timeout, and an environment without
the variables that would point it at another repository, config or program. Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PULL_TIMEOUT_S = 120.0
# How much of git's output a report keeps: its last lines say what happened.
_REPORT_LINES = 4
# The GIT_* variables kept: how the user authenticates. Every other one (GIT_DIR, GIT_WORK_TREE,
# GIT_CONFIG_*, GIT_EXEC_PATH, GIT_INDEX_FILE, ...) could make `git pull` act on something else.
_KEPT_GIT_VARS = frozenset({"GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS"})
_DROPPED_VARS = frozenset({"LD_PRELOAD", "LD_AUDIT"})


def git_environment(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items()
           if name not in _DROPPED_VARS and (not name.startswith("GIT_") or name in _KEPT_GIT_VARS)}
    env["GIT_TERMINAL_PROMPT"] = "0"  # a remote asking for a password fails instead of waiting forever
    return env


def _git(git: str, folder: str, *args: str, timeout: float) -> tuple[int, str]:
    """git in its own process group: on timeout the whole group goes (git-remote-*, ssh), not git alone."""
    try:
        proc = subprocess.Popen([git, *args], cwd=folder, env=git_environment(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:  # the folder is gone or unreadable
        return -1, f"cannot run git in {folder}: {exc.strerror}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return -1, f"git {' '.join(args)} did not finish in {timeout:.0f}s"
    return proc.returncode, out.decode("utf-8", "replace").strip()


def pull_collections(collections: list[dict[str, Any]], names: list[str] | None,
                     timeout: float = PULL_TIMEOUT_S) -> list[dict[str, Any]]:
    """Pull each collection's work tree (of those named, or all): one report per collection, with
    status "pulled", "failed" or "skipped" (not in a git work tree) and git's last lines. A work tree
    holding several collections is pulled once."""
    git = shutil.which("git")
    reports: list[dict[str, Any]] = []
    pulled: dict[str, dict[str, Any]] = {}  # work tree -> its report
    for c in collections:
        if names and c["name"] not in names:
            continue
        report = {"collection": c["name"], "root": c["root"]}
        if git is None:
            reports.append({**report, "status": "failed", "message": "git is not installed (not on PATH)"})
            continue
        code, top = _git(git, c["root"], "rev-parse", "--show-toplevel", timeout=timeout)
        if code != 0 or not top:
            reports.append({**report, "status": "skipped", "message": "not in a git work tree"})
            continue
        if top not in pulled:
            code, out = _git(git, top, "pull", "--ff-only", timeout=timeout)
            message = "\n".join(out.splitlines()[-_REPORT_LINES:])
            pulled[top] = {"status": "pulled" if code == 0 else "failed", "message": message}
        reports.append({**report, "work_tree": top, **pulled[top]})
    return reports
