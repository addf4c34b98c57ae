"""The daemon's Unix socket: single-instance lock, stale-socket detection, permissions,
or the socket systemd passed (socket activation)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import trio

from qmdd import ownfiles
from qmdd.paths import Paths, check_socket_path, ensure_private_dir
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.transports import systemd

log = logging.getLogger("qmdd.listener")


def socket_is_live(path: Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections on `path` (a live daemon we must not hijack)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _flock(path: Path, what: str) -> int:
    fd, replaced = ownfiles.open_lock_file(os.fspath(path))
    if replaced:
        log.warning("replaced %s: a symlink or a file not ours was in its place (its target is untouched)", path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise QmddError(ErrorCode.DAEMON_RUNNING, f"another qmdd holds {path} ({what})") from None
    try:
        ownfiles.write_pid(fd)
    except OSError as exc:  # a full disk: the lock is what matters, `daemon stop` falls back on the socket
        log.warning("could not write the pid into %s: %s", path, exc)
    return fd


@contextlib.contextmanager
def instance_lock(paths: Paths) -> Iterator[None]:
    """Hold exclusive flocks for the daemon's lifetime on the runtime dir (one daemon per socket)
    and on the data dir (one daemon per index, even when two shells disagree on XDG_RUNTIME_DIR)."""
    ensure_private_dir(paths.runtime_dir)
    ensure_private_dir(paths.data_dir)
    fds = [_flock(paths.lock_file, f"serving {paths.socket}")]
    try:
        fds.append(_flock(paths.index_lock, f"using the index in {paths.data_dir}"))
        yield
    finally:
        for fd in fds:
            os.close(fd)


def bind_socket(paths: Paths) -> socket.socket:
    """Bind and listen on the daemon socket, replacing a stale one left by a dead daemon."""
    path = paths.socket
    check_socket_path(path)
    if path.is_symlink():  # never ours: probing through it could only reach someone else's socket
        path.unlink()
    elif path.exists():
        if socket_is_live(path):
            raise QmddError(ErrorCode.DAEMON_RUNNING, f"a daemon is already answering on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask covers the window between bind() and chmod(): the socket is never world-usable.
        old_umask = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def trio_listener(sock: socket.socket) -> trio.SocketListener:
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def remove_socket(paths: Paths) -> None:
    """Unlink the socket file; safe because the instance lock guarantees nobody else bound it."""
    with contextlib.suppress(FileNotFoundError):
        paths.socket.unlink()


def inherited_socket(paths: Paths) -> socket.socket | None:
    """The listening socket systemd passed (qmdd.socket), or None when the daemon was started any
    other way. Anything else passed is a unit misconfiguration: CONFIG_ERROR."""
    hint = ("qmdd.socket needs exactly one ListenStream= with a Unix socket path; "
            "`qmdctl service install` writes one.",)
    try:
        fds = systemd.listen_fds()
        if not fds:
            return None
        if len(fds) != 1:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"systemd passed {len(fds)} sockets, qmdd serves one",
                            hints=hint)
        sock = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise QmddError(ErrorCode.CONFIG_ERROR, f"the socket systemd passed is unusable: {exc}",
                        hints=hint) from exc
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        raise QmddError(ErrorCode.CONFIG_ERROR, "the socket systemd passed is not a listening Unix stream socket",
                        hints=hint)
    address = sock.getsockname()
    if address != os.fspath(paths.socket):
        # qmdctl finds the daemon at paths.socket: on another address, clients would not reach it.
        log.warning("systemd passed a socket on %r, but clients look for qmdd on %s", address, paths.socket)
    return sock


def write_pid_file(paths: Paths) -> None:
    """The pid file, for scripts (the instance locks hold the pid too). Serving does not need it: on a
    full disk the daemon logs a warning and goes on, leaving no stale pid file behind."""
    try:
        ownfiles.replace_file(os.fspath(paths.pid_file), f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("could not write %s: %s", paths.pid_file, exc)
        paths.pid_file.unlink(missing_ok=True)


def remove_pid_file(paths: Paths) -> None:
    paths.pid_file.unlink(missing_ok=True)


def _record_address(paths: Paths, address: str) -> None:
    try:
        ownfiles.replace_file(os.fspath(paths.address_file), f"{address}\n")
    except OSError as exc:  # a full disk: clients that compute the same socket path still find us
        log.warning("could not record the socket address in %s: %s", paths.address_file, exc)


@contextlib.contextmanager
def daemon_socket(paths: Paths) -> Iterator[socket.socket]:
    """The socket to serve on, for the daemon's lifetime, its address recorded in the data dir. With
    socket activation the file belongs to systemd, which goes on listening (and queueing clients)
    after the daemon exits: it is neither replaced nor removed here, and its record stays true.
    Otherwise the daemon binds its own and removes it, and the record, on the way out."""
    inherited = inherited_socket(paths)
    if inherited is not None:
        log.info("serving on the socket passed by systemd (socket activation)")
        address = inherited.getsockname()
        if isinstance(address, str) and address.startswith("/"):
            _record_address(paths, address)
        with inherited:
            yield inherited
        return
    sock = bind_socket(paths)
    try:
        _record_address(paths, os.fspath(paths.socket))
        yield sock
    finally:
        paths.address_file.unlink(missing_ok=True)
        remove_socket(paths)
        sock.close()
