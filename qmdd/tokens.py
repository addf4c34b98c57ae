"""The HTTP door's bearer token: a random secret in a file only the daemon's user can read.

The daemon makes it at its first start with HTTP on; `qmdctl http token` prints it and `--rotate` writes a
new one, which the daemon serves from the next request on (it notices the file changed)."""

from __future__ import annotations

import ipaddress
import os
import secrets

from qmdd import ownfiles
from qmdd.paths import Paths, ensure_private_dir


def read_token(paths: Paths) -> str | None:
    """The token, or None when there is none yet (or the file is not a private file of ours)."""
    return ownfiles.read_record(str(paths.http_token))


def ensure_token(paths: Paths) -> str:
    """The token, made first if there is none."""
    return read_token(paths) or rotate_token(paths)


def rotate_token(paths: Paths) -> str:
    """A new token in place of the old one (written whole: a reader sees one or the other)."""
    ensure_private_dir(paths.data_dir)
    token = secrets.token_urlsafe(32)
    ownfiles.replace_file(str(paths.http_token), token + "\n", durable=True)
    return token


class TokenFile:
    """The token as the file holds it now, read again only when the file changed (a stat per request)."""

    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._seen: tuple[int, int, int] | None = None
        self._token: str | None = None

    def current(self) -> str | None:
        try:
            st = os.stat(self._paths.http_token, follow_symlinks=False)
        except OSError:
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._token, self._seen = read_token(self._paths), seen
        return self._token


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine: a token sent there never crosses the network. The door checks
    Host and Origin with it, and `doctor` whether the door's URL carries the token in the clear."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
