"""The daemon's own files: its socket, lock, pid and address files, in its private dirs.

Another user may own the runtime dir (/tmp/qmdd-UID when XDG_RUNTIME_DIR is unset, created first by
anyone) and serve an impostor socket there, or may have planted symlinks in a dir of ours while it was
writable. So a client checks the socket's dir, the socket and the server's uid before it sends a
byte, and the daemon opens and writes its files without following a link put in their place.

Stdlib only: `qmdctl` uses the checks on its hot path (two lstat calls and one getsockopt).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct

from qmdd.protocol.errors import ErrorCode, QmddError

_PEERCRED = struct.Struct("3i")
_RECORD_MAX_BYTES = 4096


def _not_yours(what: str, path: str, why: str) -> QmddError:
    return QmddError(ErrorCode.PERMISSION_DENIED, f"refusing {what} {path}: {why}", hints=(
        "Another user can replace what is in it: qmdd will not use it, nor send anything to a socket there.",
        "Set XDG_RUNTIME_DIR (normally /run/user/$(id -u)) or QMDD_HOME to a directory of yours, "
        "or remove this one and let qmdd create it with mode 0700."))


def check_private_dir(path: str, what: str = "directory") -> bool:
    """False when `path` does not exist; True when it is a real directory of ours that no one else
    can write to; PERMISSION_DENIED otherwise (a symlink, another user's, or group/world-writable)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise _not_yours(what, path, "it is not a directory (a symlink or a file)")
    if st.st_uid != os.getuid():
        raise _not_yours(what, path, f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if st.st_mode & 0o022:
        raise _not_yours(what, path, f"other users can write to it (mode {stat.S_IMODE(st.st_mode):o})")
    return True


def check_socket(path: str) -> bool:
    """True when a socket of ours, in a private dir of ours, is there to connect to; False when there
    is none (nothing, or a leftover that is no socket: the daemon replaces it); PERMISSION_DENIED
    when it or its dir is someone else's."""
    if not check_private_dir(os.path.dirname(path), "socket directory"):
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        return False
    if st.st_uid != os.getuid():
        raise _not_yours("socket", path, f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    return True


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that listens on the other end of a connected Unix socket,
    from the kernel (SO_PEERCRED): no file check can be raced past it."""
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid, gid


def check_server(sock: socket.socket, path: str) -> None:
    """PERMISSION_DENIED unless the kernel says the server runs as us."""
    _pid, peer_uid, _gid = peer_credentials(sock)
    if peer_uid != os.getuid():
        raise QmddError(ErrorCode.PERMISSION_DENIED,
                        f"refusing the server on {path}: it runs as uid {peer_uid}, not as you (uid {os.getuid()})",
                        hints=("Another user's process listens where qmdd should: nothing was sent to it.",
                               "Set XDG_RUNTIME_DIR or QMDD_HOME to a directory of yours."))


def _is_own_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1


def open_lock_file(path: str) -> tuple[int, bool]:
    """(fd, replaced): the lock file opened read-write without following a link. A symlink, hard link
    or another user's file in its place (never one the daemon made) is removed and a fresh file made:
    its target is left untouched. Only a file of ours is ever locked and written."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    replaced = False
    for _attempt in range(3):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: O_NOFOLLOW met a symlink
                raise
            bad = os.lstat(path)
        else:
            bad = os.fstat(fd)
            if _is_own_file(bad):
                return fd, replaced
            os.close(fd)
        # Only the entry judged bad is removed: a daemon starting at the same time may have put a
        # good one in its place since, and that one is kept.
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (bad.st_dev, bad.st_ino):
                os.unlink(path)
                replaced = True
    raise QmddError(ErrorCode.PERMISSION_DENIED, f"{path} keeps being replaced by a link or a file not ours",
                    hints=("Another process writes into qmdd's directory: find it, then remove the file.",))


def write_pid(fd: int) -> None:
    """Our pid into an open lock file. Overwritten in place, then cut: a full disk still has the
    block the previous pid used, where truncating first would need a new one."""
    data = f"{os.getpid()}\n".encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def lock_holder(path: str) -> tuple[bool, int | None]:
    """(held, pid) for a daemon's lock file: whether a process holds its flock, and that process's pid
    when the file (ours, no link) names one that runs as us. Never signal a pid from anywhere else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        if not _is_own_file(os.fstat(fd)):
            return False, None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            pid = int(text) if text.isdigit() else None
            return True, pid if pid is not None and runs_as_us(pid) else None
        return False, None
    finally:
        os.close(fd)


def runs_as_us(pid: int) -> bool:
    try:
        return pid > 0 and os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def replace_file(path: str, text: str | bytes, *, durable: bool = False) -> None:
    """Write `path` whole through a new file renamed over it: a symlink planted at `path` is replaced,
    never followed, and a reader sees the old content or the new, never a part. `durable`: the new file
    reaches the disk before the rename, so a crash too leaves one or the other. On failure (a full
    disk) the new file is removed and the error raised."""
    import tempfile

    directory, name = os.path.split(path)
    fd, new = tempfile.mkstemp(prefix=f".{name}.", dir=directory)  # O_EXCL | O_NOFOLLOW, mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode() if isinstance(text, str) else text)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(new, path)
    except BaseException:
        os.unlink(new)
        raise


def read_record(path: str) -> str | None:
    """The one line of a small file of ours (no link, no FIFO) in a private dir of ours, or None when
    there is no such file."""
    if not check_private_dir(os.path.dirname(path), "data directory"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _is_own_file(os.fstat(fd)):
            return None
        data = os.read(fd, _RECORD_MAX_BYTES)
    finally:
        os.close(fd)
    line = os.fsdecode(data).strip()
    return line or None
