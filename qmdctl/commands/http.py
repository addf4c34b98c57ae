"""`qmdctl http token`: the HTTP door's bearer token, for curl and HTTP clients. Never contacts the daemon."""

from __future__ import annotations

from qmdd import ownfiles
from qmdd.paths import resolve_paths
from qmdd.tokens import ensure_token, rotate_token

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qmdctl.invocation import Invocation


def token(inv: Invocation) -> int:
    paths = resolve_paths()
    rotate = bool(inv.args.get("rotate"))
    value = rotate_token(paths) if rotate else ensure_token(paths)
    url = ownfiles.read_record(str(paths.http_address))
    info = {"token": value, "rotated": rotate, "file": str(paths.http_token), "url": url}
    # Text output is the token alone: `curl -H "Authorization: Bearer $(qmdctl http token)" ...`.
    inv.output.value(info, lambda i: inv.output.line(i["token"]))
    return 0
