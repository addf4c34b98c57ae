"""Running under systemd, without libsystemd: sd_notify(3), sd_listen_fds(3) and journald-friendly logs.

Everything here is a no-op when the daemon was not started by a service manager (NOTIFY_SOCKET,
LISTEN_FDS and JOURNAL_STREAM unset): qmdd runs the same with or without systemd. No dependency
beyond the stdlib, and trio for the watchdog task.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import trio

log = logging.getLogger("qmdd.systemd")

SD_LISTEN_FDS_START = 3
"""The first file descriptor passed by socket activation."""
NOTIFY_TIMEOUT_S = 1.0
"""A manager too busy to take a datagram within this long gets none: the event loop must not stall."""
STATUS_REFRESH_S = 10.0
"""How often STATUS= is brought up to date when no watchdog paces the reports."""


def _notify_address() -> str | None:
    """NOTIFY_SOCKET as a socket address: a path, or '@name' for the abstract namespace."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET=%r is not a Unix socket path or abstract name; not notifying systemd", address)
    return None


def notify(*fields: str, timeout: float = NOTIFY_TIMEOUT_S, log_failure: bool = True) -> bool:
    """Send sd_notify(3) fields ("READY=1", "STATUS=...") to the service manager. False when there is
    none (NOTIFY_SOCKET unset) or the datagram could not be sent within `timeout` (0: not at all if the
    manager's queue is full); that is logged, and the daemon goes on serving: the manager's own timeouts
    deal with a daemon it never hears from."""
    address = _notify_address()
    if address is None:
        return False
    message = "\n".join(field.replace("\n", " ") for field in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.sendto(message, address)
    except OSError as exc:
        if log_failure:
            log.warning("could not notify systemd (%s) of %s: %s", os.environ.get("NOTIFY_SOCKET"),
                        ", ".join(f.split("=", 1)[0] for f in fields), exc)
        return False
    return True


def listen_fds() -> list[int]:
    """sd_listen_fds(3): the file descriptors passed by socket activation (3, 4, ...), or [] when
    LISTEN_PID is not this process (the variables were meant for a parent, or leaked from one).
    LISTEN_* leave the environment in every case, so that no child process takes them for its own;
    the descriptors are made close-on-exec for the same reason. OSError for a descriptor not open."""
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if not (pid.isdigit() and count.isdigit()):
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", pid, count)
        return []
    if int(pid) != os.getpid():
        log.info("ignoring LISTEN_FDS: they were passed to pid %s, this is %d", pid, os.getpid())
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec= (WATCHDOG_USEC), as sd_watchdog_enabled(3)
    advises. None when no watchdog is set, or it watches another process (WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def keep_manager_informed(describe: Callable[[], str]) -> None:
    """While the daemon serves: WATCHDOG=1 every watchdog period, and STATUS= whenever `describe()`
    changes. The pings come from a trio task on purpose: an event loop that is stuck stops them, and
    systemd restarts the daemon. Returns at once when no service manager listens.

    Each report is sent without waiting: a manager whose queue is full (it is busy, or a test is not
    reading) must not stall the event loop. A STATUS that could not be sent counts as not reported
    and goes with the next tick; otherwise a change met by a full queue would never be told."""
    if _notify_address() is None:
        return
    period = watchdog_period()
    reported = describe()
    failing = False
    while True:
        await trio.sleep(period or STATUS_REFRESH_S)
        fields = ["WATCHDOG=1"] if period else []
        current = describe()
        if current != reported:
            fields.append(f"STATUS={current}")
        if not fields:
            continue
        # Logged once per run of failures, not at every tick.
        sent = notify(*fields, timeout=0, log_failure=not failing)
        failing = not sent
        if sent:
            reported = current


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal: JOURNAL_STREAM names its device:inode."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """Lines for journald: a `<N>` syslog priority prefix, which the journal turns into the entry's
    priority (errors stand out in `journalctl`), and no timestamp, since the journal keeps its own."""

    _PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self) -> None:
        super().__init__("%(name)s [%(trace_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self._PRIORITIES if record.levelno >= level), 7)
        return f"<{priority}>{super().format(record)}"
