"""Reading files of a collection safely: confined to the root, never blocking, size-guarded."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def inside(path: str, root_abs: str) -> bool:
    return path == root_abs or path.startswith(root_abs.rstrip(os.sep) + os.sep)


def resolve_inside(root: Path, relpath: str) -> Path:
    """Resolve root/relpath through symlinks; ValueError unless the result stays inside root.

    Rejects empty, absolute, NUL-containing and ".."-containing relpaths outright, so callers
    never read outside an indexed root even via a symlink planted inside it.
    """
    parts = relpath.replace("\\", "/").split("/")
    if not relpath or "\0" in relpath or relpath[0] in "/\\" or ".." in parts:
        raise ValueError(f"not a plain relative path (absolute, '..', NUL or empty): {relpath!r}")
    root_abs = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root_abs, relpath))
    if not inside(target, root_abs):
        raise ValueError(f"path escapes the collection root: {relpath!r}")
    return Path(target)


class FileTooLarge(OSError):
    """The file grew past the size guard since it was walked."""


class NotRegularFile(OSError):
    """A FIFO, socket or device where a file was expected: reading it could block forever."""


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes`, never blocking on a FIFO swapped in since the walk.

    O_NONBLOCK makes opening a FIFO return at once; fstat on the opened descriptor then decides, so
    no check-then-open race remains."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file: {path}")
        if st.st_size > max_bytes:
            raise FileTooLarge(f"{path} is {st.st_size} bytes, over the {max_bytes}-byte size guard")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0 and (data := os.read(fd, min(remaining, 1 << 20))):
            chunks.append(data)
            remaining -= len(data)
    finally:
        os.close(fd)
    if remaining <= 0:
        raise FileTooLarge(f"{path} grew over the {max_bytes}-byte size guard")
    return b"".join(chunks)
