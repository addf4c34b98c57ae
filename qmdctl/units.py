"""The systemd user units of `qmdctl service install`, rendered for the Python and paths in use.

`systemd/qmdd.service` and `systemd/qmdd.socket` in the repository are these units rendered for
/usr/bin/python3 with the default paths (tests/test_systemd.py keeps them equal).
"""

from __future__ import annotations

import os
import re
import shlex

from qmdd.paths import socket_path
from qmdd.protocol.errors import ErrorCode, QmddError

SERVICE = "qmdd.service"
SOCKET = "qmdd.socket"
DEFAULT_WATCHDOG_S = 60
"""WatchdogSec=: a daemon whose event loop is stuck this long is restarted."""

# The XDG variables that move the daemon's index, config or models (qmdd.paths) and their defaults.
_XDG_DEFAULTS = {"XDG_DATA_HOME": ".local/share", "XDG_CONFIG_HOME": ".config", "XDG_CACHE_HOME": ".cache"}

_HEADER = re.compile(r"^# Written by `qmdctl service install(?P<options>[^`]*)`")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
"""qmdd --http's HOST:PORT (the daemon checks it again at start)."""


class UnitOptions:
    __slots__ = ("socket", "watchdog_s", "http")

    def __init__(self, socket: bool = True, watchdog_s: int = DEFAULT_WATCHDOG_S, http: str = "") -> None:
        if http and not _LISTEN.fullmatch(http):
            raise QmddError(ErrorCode.INVALID_INPUT, f"--http takes HOST:PORT, not {http!r:.80}",
                            hints=("For example --http 127.0.0.1:8181 or --http [::1]:8181.",))
        # The HTTP door must be served from login on, not from the first socket client: no activation.
        self.socket = socket and not http
        self.watchdog_s = watchdog_s
        self.http = http

    def flags(self) -> str:
        """The install options that give these units (written in their header line)."""
        return ("" if self.socket or self.http else " --no-socket") + (
            "" if self.watchdog_s == DEFAULT_WATCHDOG_S else f" --watchdog {self.watchdog_s}") + (
            f" --http {self.http}" if self.http else "")

    def exec_start(self, python: str) -> str:
        """ExecStart='s command line (unquoted, as reported to the user)."""
        return f"{python} -m qmdd" + (f" --http {self.http}" if self.http else "")

    @classmethod
    def from_header(cls, text: str) -> UnitOptions | None:
        """The options a unit file was written with, from its header; None if it has none (not ours)."""
        match = _HEADER.match(text)
        if match is None:
            return None
        words = match["options"].split()
        options = cls(socket="--no-socket" not in words)
        if "--watchdog" in words[:-1] and words[words.index("--watchdog") + 1].isdigit():
            options.watchdog_s = int(words[words.index("--watchdog") + 1])
        if "--http" in words[:-1] and _LISTEN.fullmatch(words[words.index("--http") + 1]):
            options.socket, options.http = False, words[words.index("--http") + 1]
        return options


def unit_dir(environ: dict[str, str]) -> str:
    """Where the user manager reads the user's own units: $XDG_CONFIG_HOME/systemd/user."""
    config = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config):
        config = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "systemd", "user")


def _checked(value: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise QmddError(ErrorCode.CONFIG_ERROR, f"{what} {value!r} contains control characters; "
                        "a systemd unit cannot name it", hints=("Use a path without newlines or tabs.",))
    return value


def _quoted(value: str) -> str:
    """A double-quoted systemd value: C escapes for quotes and backslashes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _executable(path: str) -> str:
    """The command of ExecStart=: quoted when needed, % escaped (a specifier otherwise). Not $: systemd
    expands variables in the arguments only, and would take $$ in the command literally."""
    return (path if _PLAIN_WORD.fullmatch(path) else _quoted(path)).replace("%", "%%")


def relocations(environ: dict[str, str]) -> dict[str, str]:
    """The variables that move qmdd's files (qmdd.paths), as qmdctl sees them, for Environment=: the
    service must look where qmdctl looks. Defaults are left out, and XDG_RUNTIME_DIR always: the user
    manager sets it (%t) for every service."""
    if environ.get("QMDD_HOME"):
        names: tuple[str, ...] = ("QMDD_HOME", "QMDD_CACHE_DIR")  # QMDD_HOME makes the XDG ones moot
    else:
        names = ("QMDD_CACHE_DIR", *_XDG_DEFAULTS)
    home = os.path.expanduser("~")
    out = {}
    for name in names:
        value = environ.get(name, "")
        if name in _XDG_DEFAULTS and (not os.path.isabs(value)  # qmdd.paths ignores a relative one
                                      or os.path.normpath(value) == os.path.join(home, _XDG_DEFAULTS[name])):
            continue
        if value:
            out[name] = os.path.abspath(os.path.expanduser(value))
    return out


def listen_path(environ: dict[str, str]) -> str:
    """ListenStream= for the socket unit: qmdd's socket path, with %t for $XDG_RUNTIME_DIR as the user
    manager sets it (the daemon started by systemd computes its socket path from that)."""
    if not environ.get("QMDD_HOME"):
        return "%t/qmdd/qmdd.sock"
    return _checked(socket_path(environ), "socket path").replace("%", "%%")


def render(python: str, environ: dict[str, str], options: UnitOptions) -> dict[str, str]:
    """{unit name: text} for an install running `python -m qmdd` with the paths `environ` gives."""
    header = (f"# Written by `qmdctl service install{options.flags()}`; `qmdctl service status` tells\n"
              "# whether it is current (run install again after moving qmdd or changing QMDD_HOME).\n")
    environment = "".join(f"Environment={_quoted(f'{name}={_checked(value, name)}'.replace('%', '%%'))}\n"
                          for name, value in relocations(environ).items())
    activation = "Requires=qmdd.socket\nAfter=qmdd.socket\n" if options.socket else ""
    watchdog = f"WatchdogSec={options.watchdog_s}\n" if options.watchdog_s else ""
    install = "Also=qmdd.socket\n" if options.socket else "WantedBy=default.target\n"
    units = {SERVICE: (
        f"{header}"
        "[Unit]\n"
        "Description=qmdd local search daemon (markdown notes, docs, transcripts)\n"
        f"{activation}"
        "\n[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={_executable(_checked(python, 'Python executable'))} -m qmdd"
        f"{f' --http {_quoted(options.http)}' if options.http else ''}\n"
        "# Not the home (the default): `-m` puts the working directory first on sys.path.\n"
        "WorkingDirectory=/\n"
        f"{environment}"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "# CONFIG_ERROR (24) and DAEMON_RUNNING (29, another qmdd holds the index): a restart cannot help.\n"
        "RestartPreventExitStatus=24 29\n"
        "# READY=1 comes once every actor has started, which after a crash may take a BM25 rebuild.\n"
        "TimeoutStartSec=300\n"
        f"{watchdog}"
        "StandardOutput=journal\n"
        "StandardError=journal\n"
        "SyslogIdentifier=qmdd\n"
        "\n[Install]\n"
        f"{install}")}
    if options.socket:
        units[SOCKET] = (
            f"{header}"
            "[Unit]\n"
            "Description=qmdd socket (starts the daemon on the first connection)\n"
            "\n[Socket]\n"
            f"ListenStream={listen_path(environ)}\n"
            "SocketMode=0600\n"
            "DirectoryMode=0700\n"
            "RemoveOnStop=yes\n"
            "\n[Install]\n"
            "WantedBy=sockets.target\n")
    return units


def systemctl_line(args: list[str]) -> str:
    """`systemctl --user ARGS` as a shell command line, to print."""
    return shlex.join(["systemctl", "--user", *args])
