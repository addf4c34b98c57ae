"""`qmdctl service install|uninstall|status`: qmdd as a systemd user service, socket-activated.

The units go to $XDG_CONFIG_HOME/systemd/user/ and `systemctl --user` enables them. Where no user
manager answers (containers, ssh sessions of users without lingering), the units are still written
and the commands are printed for the user to run where one does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from qmdctl.agent import DryRun
from qmdctl.commands.daemon import STOP_TIMEOUT_S, wait_for_exit
from qmdctl.units import (
    DEFAULT_WATCHDOG_S,
    SERVICE,
    SOCKET,
    UnitOptions,
    render,
    systemctl_line,
    unit_dir,
)
from qmdd.paths import Paths, resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation

SYSTEMCTL_TIMEOUT_S = 60.0
_FAILED_HINTS = ("`systemctl --user status qmdd.service qmdd.socket` and `journalctl --user -u qmdd` say why.",)


class Systemctl:
    """`systemctl --user`, when a user manager answers it; `reason` says why not otherwise."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.reason = self._unreachable_reason()

    @property
    def reachable(self) -> bool:
        return self.reason is None

    @property
    def installed(self) -> bool:
        return shutil.which("systemctl") is not None

    @staticmethod
    def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=SYSTEMCTL_TIMEOUT_S)

    def _unreachable_reason(self) -> str | None:
        if not self.installed:
            return "systemctl is not installed"
        try:
            probe = self._run(["show", "--property=Version"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`systemctl --user` failed: {exc}"
        if probe.returncode != 0:
            detail = (probe.stderr.strip() or probe.stdout.strip() or f"exit status {probe.returncode}")
            return f"no systemd user manager answers `systemctl --user` ({detail.splitlines()[0]})"
        return None

    def run(self, args: list[str]) -> str | None:
        """Run one command: None when it succeeded (it is then in `ran`), else systemctl's complaint."""
        line = systemctl_line(args)
        if not self.installed:
            return "systemctl is not installed"
        try:
            proc = self._run(args)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{line}` failed: {exc}"
        if proc.returncode != 0:
            return f"`{line}` failed: {proc.stderr.strip() or f'exit status {proc.returncode}'}"
        self.ran.append(line)
        return None

    def check(self, args: list[str]) -> None:
        failure = self.run(args)
        if failure is not None:
            raise QmddError(ErrorCode.CONFIG_ERROR, failure, hints=_FAILED_HINTS)


def _answer(args: list[str]) -> str | None:
    """What `systemctl --user is-enabled/is-active UNIT` prints ('enabled', 'inactive', ...); None when
    it prints nothing (no systemctl, or no manager to ask)."""
    if shutil.which("systemctl") is None:
        return None
    try:
        proc = Systemctl._run(args)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _file_error(exc, path) from exc


def _file_error(exc: OSError, path: str) -> QmddError:
    code = ErrorCode.PERMISSION_DENIED if isinstance(exc, PermissionError) else ErrorCode.CONFIG_ERROR
    return QmddError(code, f"cannot update {path}: {exc.strerror or exc}",
                     hints=("Set XDG_CONFIG_HOME to a directory you can write, or fix the permissions.",))


def _write_units(directory: str, units: dict[str, str]) -> list[dict[str, Any]]:
    """Write each unit (atomically: systemd never reads half a file); which ones changed."""
    written = []
    try:
        os.makedirs(directory, exist_ok=True)
        for name, text in units.items():
            path = os.path.join(directory, name)
            changed = _read(path) != text
            if changed:
                staging = f"{path}.tmp-{os.getpid()}"
                with open(staging, "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(staging, 0o644)
                os.replace(staging, path)
            written.append({"name": name, "path": path, "changed": changed})
    except OSError as exc:
        raise _file_error(exc, directory) from exc
    return written


def _remove_unit(directory: str, name: str) -> str | None:
    """Remove a unit file and the *.wants/ links to it that `systemctl enable` made (left behind when
    no manager could disable it). The removed path, or None when there was no such unit."""
    path = os.path.join(directory, name)
    try:
        for entry in os.scandir(directory):
            link = os.path.join(entry.path, name)
            if entry.name.endswith((".wants", ".requires")) and os.path.islink(link):
                os.unlink(link)
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _file_error(exc, path) from exc
    return path


def running_daemon(paths: Paths) -> int | None:
    """The pid of a running daemon, from its instance lock: connecting instead would start the
    daemon of an active qmdd.socket just to ask. Only a lock file of ours (no planted link) naming a
    process that runs as us counts: that pid is signalled."""
    from qmdd.ownfiles import lock_holder

    return lock_holder(str(paths.lock_file))[1]


def stop_daemon(pid: int) -> None:
    """SIGTERM (the daemon's graceful shutdown) and wait for it to exit."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_for_exit(pid):
        return
    raise QmddError(ErrorCode.TIMEOUT, f"qmdd (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f}s",
                    hints=(f"kill {pid}, then run `qmdctl service install` again.",))


def _watchdog_s(args: dict[str, Any]) -> int:
    value = args.get("watchdog")
    if value is None:
        return DEFAULT_WATCHDOG_S
    if value < 0:
        raise QmddError(ErrorCode.INVALID_INPUT, f"--watchdog must be 0 (off) or a number of seconds, not {value}")
    return int(value)


def install(inv: Invocation) -> int:
    environ = dict(os.environ)
    options = UnitOptions(socket=not inv.args.get("no_socket"), watchdog_s=_watchdog_s(inv.args),
                          http=inv.args.get("http") or "")
    start = not inv.args.get("no_start")
    directory = unit_dir(environ)
    units = render(sys.executable, environ, options)
    unit = SOCKET if options.socket else SERVICE
    # A socket unit left by an earlier install without --no-socket would go on starting the daemon.
    stale = not options.socket and os.path.exists(os.path.join(directory, SOCKET))
    previous = _read(os.path.join(directory, unit))
    # enable --now leaves a unit that is already running on its old settings: a changed one is restarted.
    restart = [["restart", unit]] if start and previous is not None and previous != units[unit] else []
    commands = [["daemon-reload"], ["enable", "--now", unit] if start else ["enable", unit], *restart]
    if inv.dry_run:
        steps = [f"run `{systemctl_line(['disable', '--now', SOCKET])}` and remove "
                 f"{os.path.join(directory, SOCKET)}"] if stale else []
        steps.append(f"write {' and '.join(os.path.join(directory, name) for name in units)}"
                     f" (ExecStart={options.exec_start(sys.executable)})")
        if start:
            steps.append("stop the daemon if one is running")
        steps.append("run " + " and ".join(f"`{systemctl_line(c)}`" for c in commands))
        raise DryRun({"action": ", then ".join(steps)})

    systemctl = Systemctl()
    if stale and systemctl.reachable:
        systemctl.check(["disable", "--now", SOCKET])
    if stale:
        _remove_unit(directory, SOCKET)
    written = _write_units(directory, units)
    running = running_daemon(resolve_paths(environ)) if start else None
    to_run: list[str] = []
    if systemctl.reachable:
        if running is not None:
            stop_daemon(running)  # else the daemon systemd starts finds the index taken and exits
        for args in commands:
            systemctl.check(args)
    else:
        # Enabling only links files: done now, a user manager that comes later (the next login) starts qmdd.
        if systemctl.installed and systemctl.run(["enable", unit]) is None:
            commands = [["daemon-reload"], *(restart or [["start", unit]] * start)]
        commands = [["stop", SOCKET]] * stale + commands  # its file is gone, the manager may still run it
        to_run = ["qmdctl daemon stop"] * (running is not None) + [systemctl_line(c) for c in commands]
    result = {"unit_dir": directory, "units": written, "exec_start": options.exec_start(sys.executable),
              "socket_activation": options.socket, "watchdog_s": options.watchdog_s,
              "stopped_pid": running if systemctl.reachable else None,
              "ran": systemctl.ran, "to_run": to_run, "reason": systemctl.reason if to_run else None}
    inv.output.value(result, lambda r: _print_install(inv, r, start))
    return 0


def _print_commands(inv: Invocation, result: dict[str, Any]) -> None:
    for line in result["ran"]:
        inv.output.line(f"ran: {line}")
    if result["to_run"]:
        inv.output.line(f"not run: {result['reason']}; run these where the user manager is available:")
        for line in result["to_run"]:
            inv.output.line(f"  {line}")


def _print_install(inv: Invocation, result: dict[str, Any], start: bool) -> None:
    for unit in result["units"]:
        inv.output.line(f"{'wrote' if unit['changed'] else 'unchanged'} {unit['path']}")
    if result["stopped_pid"] is not None:
        inv.output.line(f"stopped the daemon that was running (pid {result['stopped_pid']}): systemd starts the next")
    _print_commands(inv, result)
    if not result["to_run"] and start:
        inv.output.line("qmdd now starts " + ("on the first connection to its socket" if result["socket_activation"]
                                              else "with your user session") + "; its log: journalctl --user -u qmdd")


def uninstall(inv: Invocation) -> int:
    directory = unit_dir(dict(os.environ))
    present = [name for name in (SOCKET, SERVICE) if os.path.exists(os.path.join(directory, name))]
    disable, reload = ["disable", "--now", *present], ["daemon-reload"]
    if inv.dry_run:
        raise DryRun({"action": f"run `{systemctl_line(disable)}`, remove "
                      f"{' and '.join(os.path.join(directory, name) for name in present)}, then run "
                      f"`{systemctl_line(reload)}`" if present else f"nothing: no qmdd units in {directory}"})
    result: dict[str, Any] = {"unit_dir": directory, "removed": [], "ran": [], "to_run": [], "reason": None,
                              "warnings": []}
    if present:
        systemctl = Systemctl()
        # Best effort, also without a manager (it only unlinks then): a unit that was never loaded cannot
        # be stopped, and its files must go anyway; links left behind are removed with them.
        failure = systemctl.run(disable if systemctl.reachable else ["disable", *present])
        if failure is not None and systemctl.reachable:
            result["warnings"].append(failure)
            inv.output.warn(f"warning: {failure}")
        result["removed"] = [path for path in (_remove_unit(directory, name) for name in present) if path]
        if systemctl.reachable:
            systemctl.check(reload)
        else:
            result["to_run"] = [systemctl_line(["stop", *present]), systemctl_line(reload)]
            result["reason"] = systemctl.reason
        result["ran"] = systemctl.ran
    inv.output.value(result, lambda r: _print_uninstall(inv, r))
    return 0


def _print_uninstall(inv: Invocation, result: dict[str, Any]) -> None:
    for path in result["removed"]:
        inv.output.line(f"removed {path}")
    if not result["removed"]:
        inv.output.line(f"no qmdd units in {result['unit_dir']}")
    _print_commands(inv, result)


def status(inv: Invocation) -> int:
    environ = dict(os.environ)
    directory = unit_dir(environ)
    if inv.dry_run:
        raise DryRun({"action": f"compare the units in {directory} with what `qmdctl service install` would "
                      "write, and ask `systemctl --user is-enabled` and `is-active` about them"})
    texts = {name: _read(os.path.join(directory, name)) for name in (SERVICE, SOCKET)}
    # Compare with the install these files came from: the options are in their header line.
    options = UnitOptions.from_header(texts[SERVICE] or texts[SOCKET] or "") or UnitOptions()
    expected = render(sys.executable, environ, options)
    units = []
    for name, text in texts.items():
        units.append({"name": name, "path": os.path.join(directory, name), "installed": text is not None,
                      "current": text == expected.get(name),
                      "enabled": _answer(["is-enabled", name]), "active": _answer(["is-active", name])})
    result = {"unit_dir": directory, "installed": texts[SERVICE] is not None,
              "current": all(u["current"] for u in units), "socket_activation": texts[SOCKET] is not None,
              "exec_start": options.exec_start(sys.executable), "units": units}
    inv.output.value(result, lambda r: _print_status(inv, r))
    return 0


def _print_status(inv: Invocation, result: dict[str, Any]) -> None:
    if not result["installed"]:
        inv.output.line(f"qmdd.service is not installed in {result['unit_dir']} (qmdctl service install)")
    for unit in result["units"]:
        if not unit["installed"]:
            state = "not installed"
        else:
            state = "current" if unit["current"] else "outdated: run `qmdctl service install`"
        answers = ", ".join(f"{k} {unit[k]}" for k in ("enabled", "active") if unit[k] is not None)
        inv.output.line(f"{unit['name']:<13} {state}" + (f" ({answers})" if answers else ""))
    inv.output.line(f"unit dir: {result['unit_dir']}")
