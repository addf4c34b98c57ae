"""`qmdctl init`: a project-local index, qmd's `qmd init`.

qmd writes `.qmd/index.yml` and `.qmd/index.sqlite` in the current folder and, from then on, any qmd
command run in it or below uses that index. qmdd's indexes belong to a daemon, so the project gets a
named index of its own (its own data directory, socket and daemon, see `qmdd.paths`), and
`.qmd/qmdd-index` records its name: qmdctl run in the folder or below adopts it (`qmdctl.indexes`).
The index data stays out of the project tree: a clone carrying a `.qmd/` folder can choose at most a
name, never a database, plugins or a token. Like qmd, init adds no collection: `qmdctl collection add .`
does, into the new index. Never contacts the daemon (it starts on the first command that needs it).
"""

from __future__ import annotations

import hashlib
import os
import stat

from qmdctl import indexes
from qmdd.paths import INDEX_NAME_MAX, check_socket_path, resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qmdctl.invocation import Invocation


def project_index_name(folder: str) -> str:
    """The folder's name made an index name, and a digest of its path: two `notes` folders differ."""
    base = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in os.path.basename(folder)).lstrip(".-")
    digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:8]
    return f"{base[: INDEX_NAME_MAX - 9] or 'project'}-{digest}"


def init(inv: Invocation) -> int:
    folder = os.path.realpath(os.getcwd())
    if folder == os.path.realpath(os.path.expanduser("~")):
        raise QmddError(ErrorCode.INVALID_INPUT, "refusing to make a project index in your home folder",
                        hints=("The default index is there already: `qmdctl collection add PATH`.",
                               "Run `qmdctl init` inside a project folder."))
    qmd_dir = os.path.join(folder, indexes.PROJECT_DIR)
    marker = os.path.join(qmd_dir, indexes.PROJECT_MARKER)
    existing = os.path.lexists(marker)
    # Named by --index NAME (or $QMDD_INDEX); else the marker's own; else made from the folder. A marker
    # further up (an enclosing project) is not this folder's.
    if indexes.chosen_by in ("option", "environment"):
        name = os.environ["QMDD_INDEX"]
    elif existing:
        name = indexes.read_marker(marker)
    else:
        name = project_index_name(folder)
    paths = resolve_paths({**os.environ, "QMDD_INDEX": name})
    check_socket_path(paths.socket)
    _write_marker(qmd_dir, marker, name)
    info = {"index": name, "folder": folder, "marker": marker, "created": not existing,
            "data_dir": str(paths.data_dir), "socket": str(paths.socket)}
    inv.output.value(info, lambda i: inv.output.line(
        f"{'ready to go with new local index' if i['created'] else 'local index'} {i['index']} "
        f"(marker {i['marker']}; data {i['data_dir']})\n"
        "  next: `qmdctl collection add .` indexes this folder into it"))
    return 0


def _write_marker(qmd_dir: str, marker: str, name: str) -> None:
    """Write `.qmd/qmdd-index`, refusing a `.qmd` or marker that is a link or not ours: a checked-out
    tree must not make init write elsewhere."""
    try:
        os.makedirs(qmd_dir, exist_ok=True)
        st = os.lstat(qmd_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise QmddError(ErrorCode.PERMISSION_DENIED, f"{qmd_dir} is not a folder owned by this user")
        temp = f"{marker}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)
        os.replace(temp, marker)  # replaces a link named like the marker, never follows it
    except OSError as exc:
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"cannot write {marker}: {exc.strerror}",
                        hints=("Run `qmdctl init` in a folder you can write to.",)) from exc
