"""Reading files of a collection safely: confined to the root, never blocking, size-guarded.

Nothing under a root is opened by a path the kernel resolves: a check (realpath) and an open that
follows links are two moments, and a neighbour who swaps a symlink in between reads any file the
daemon can. Instead the root is opened once, with O_NOFOLLOW, and compared with the (device, inode)
pinned when the collection was added; every path below it is then opened one component at a time
relative to the directory before it (openat), each with O_NOFOLLOW. A symlink met on the way is read
(readlinkat) and its target resolved against the root's path: inside the root, the lookup starts
again from the root descriptor; outside, the path is refused. So the walk's policy (links are
followed to targets inside the root) holds at the moment of every open, not just at rest.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable
from typing import TypeVar

RootKey = tuple[int, int]
"""(st_dev, st_ino) of a collection root: which directory it is, whatever its path."""

MAX_SYMLINKS = 40
"""Links followed in one lookup before giving up with ELOOP, the kernel's own limit."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO swapped in since the walk returns at once (fstat then refuses it).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

T = TypeVar("T")


def inside(path: str, root_abs: str) -> bool:
    return path == root_abs or path.startswith(root_abs.rstrip(os.sep) + os.sep)


class EscapesRoot(OSError):
    """The path leads outside the collection root: absolute, '..', NUL, or a symlink out."""


class RootChanged(OSError):
    """The collection root is a symlink now, or another directory than the one that was added."""


class FileTooLarge(OSError):
    """The file grew past the size guard since it was walked."""


class NotRegularFile(OSError):
    """A FIFO, socket or device where a file was expected: reading it could block forever."""


def _plain_parts(relpath: str) -> list[str]:
    parts = relpath.split("/")
    if "\0" in relpath or any(p in ("", ".", "..") for p in parts):
        raise EscapesRoot(f"not a plain relative path (absolute, '..', NUL or empty): {relpath!r}")
    return parts


class ConfinedRoot:
    """An open collection root; every file and directory below it is reached from this descriptor."""

    def __init__(self, path: str, pin: RootKey | None = None) -> None:
        """`path` is the root's absolute, resolved path; `pin` its recorded identity (None: not yet recorded)."""
        self.path = path
        try:
            self.fd = os.open(path, _DIR_FLAGS)
        except NotADirectoryError:
            if os.path.islink(path):
                raise RootChanged("a symlink took its place") from None
            raise
        st = os.fstat(self.fd)
        self.key: RootKey = (st.st_dev, st.st_ino)
        if pin is not None and self.key != tuple(pin):
            os.close(self.fd)
            raise RootChanged("another directory took its place")

    def __enter__(self) -> ConfinedRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open_dir(self, relpath: str) -> int:
        """A descriptor of the directory at `relpath` ("" is the root), symlinks followed inside the root."""
        return self._lookup(relpath, lambda name, at: os.open(name, _DIR_FLAGS, dir_fd=at))

    def stat(self, relpath: str) -> os.stat_result:
        """What `relpath` leads to, symlinks followed inside the root."""
        return self._lookup(relpath, _stat_no_link)

    def lstat(self, relpath: str) -> os.stat_result:
        """`relpath` itself (a symlink is not followed), its directories reached inside the root."""
        return self._lookup(relpath, lambda name, at: os.stat(name, dir_fd=at, follow_symlinks=False))

    def read(self, relpath: str, max_bytes: int) -> bytes:
        """A regular file of at most `max_bytes`, symlinks followed inside the root."""
        fd = self._lookup(relpath, lambda name, at: os.open(name, _FILE_FLAGS, dir_fd=at))
        return _read_descriptor(fd, relpath, max_bytes)

    def read_in(self, dir_fd: int, dir_rel: str, name: str, max_bytes: int) -> bytes:
        """`read(dir_rel/name)` through a descriptor of that directory already opened by `open_dir`:
        one openat instead of a lookup from the root, unless `name` is a symlink."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            return self.read(f"{dir_rel}/{name}" if dir_rel else name, max_bytes)
        return _read_descriptor(fd, name, max_bytes)

    def _lookup(self, relpath: str, final: Callable[[str, int], T]) -> T:
        """`final(name, dir_fd)` on the last component of `relpath`, every directory before it opened
        from the root with O_NOFOLLOW. `final` must not follow a symlink: it fails with ELOOP or ENOTDIR
        (or, for a stat, returns the link); a link is then read and the lookup restarts from the root."""
        parts = _plain_parts(relpath) if relpath else []
        for _ in range(MAX_SYMLINKS + 1):
            at = self.fd
            try:
                if not parts:
                    return final(".", at)
                for depth, name in enumerate(parts):
                    last = depth == len(parts) - 1
                    try:
                        if last:
                            return final(name, at)
                        step = os.open(name, _DIR_FLAGS, dir_fd=at)
                    except OSError as exc:
                        followed = self._through_link(exc, name, at, parts[:depth], parts[depth + 1:])
                        if followed is None:
                            raise
                        parts = followed
                        break
                    if at != self.fd:
                        os.close(at)
                    at = step
            finally:
                if at != self.fd:
                    os.close(at)
        raise OSError(errno.ELOOP, f"more than {MAX_SYMLINKS} symlinks on the way", relpath)

    def _through_link(self, exc: OSError, name: str, at: int, before: list[str], after: list[str]) -> list[str] | None:
        """The path to look up instead when `name` (reached through `before`) is a symlink; None when it is
        not one and `exc` stands. Raises EscapesRoot when the link leads outside the root."""
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return None
        try:
            target = os.readlink(name, dir_fd=at)
        except OSError as not_link:
            if not_link.errno != errno.EINVAL:
                raise
            # No link now: a file where a directory is expected (exc stands), or a link swapped back
            # for a directory or file mid-lookup (look again).
            swapped = exc.errno == errno.ELOOP or stat.S_ISDIR(os.stat(name, dir_fd=at, follow_symlinks=False).st_mode)
            return [*before, name, *after] if swapped else None
        # The directories in `before` were opened with O_NOFOLLOW: real ones, so '..' in the
        # target is their lexical parent and the root's path prefix decides inside or out.
        resolved = posixpath.normpath(posixpath.join(self.path, *before, target))
        if not inside(resolved, self.path):
            raise EscapesRoot(f"symlink target {resolved!r} is outside the root")
        rest = resolved[len(self.path):].strip("/")
        return [*(rest.split("/") if rest else []), *after]


def _stat_no_link(name: str, at: int) -> os.stat_result:
    st = os.stat(name, dir_fd=at, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "a symlink", name)
    return st


def _read_descriptor(fd: int, what: str, max_bytes: int) -> bytes:
    """Read an opened file of at most `max_bytes`; fstat on the descriptor decides, so no check-then-open
    race remains. Closes `fd`."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file: {what}")
        if st.st_size > max_bytes:
            raise FileTooLarge(f"{what} is {st.st_size} bytes, over the {max_bytes}-byte size guard")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0 and (data := os.read(fd, min(remaining, 1 << 20))):
            chunks.append(data)
            remaining -= len(data)
    finally:
        os.close(fd)
    if remaining <= 0:
        raise FileTooLarge(f"{what} grew over the {max_bytes}-byte size guard")
    return b"".join(chunks)
