"""Which index a qmdctl call talks to: qmd's global `--index NAME`, else $QMDD_INDEX, else the project
index that `qmdctl init` recorded in a `.qmd/qmdd-index` file in the current directory or one above it
(as qmd adopts the nearest `.qmd/index.yml`), else the default.

The choice goes into $QMDD_INDEX: `qmdd.paths` reads it, and a daemon qmdctl starts inherits it.
Stdlib only: every qmdctl call runs this.
"""

from __future__ import annotations

import os

from qmdctl.fastargs import UsageError
from qmdd.paths import check_index_name
from qmdd.protocol.errors import QmddError

PROJECT_DIR = ".qmd"
PROJECT_MARKER = "qmdd-index"
# A marker holds one name; a bigger file is not one of ours.
_MARKER_MAX_BYTES = 256

# How this call's index was chosen: "option", "environment", "project" or "default" (`qmdctl init` makes
# a folder's own index unless a name was given).
chosen_by = "default"


def select_index(argv: list[str], environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """argv without `--index NAME` / `--index=NAME` (taken anywhere before `--`, as qmd takes it), having
    set $QMDD_INDEX from it or from a project marker."""
    global chosen_by
    env = os.environ if environ is None else environ
    rest: list[str] = []
    chosen: str | None = None
    words = iter(argv)
    for word in words:
        if word == "--":
            rest.append(word)
            rest.extend(words)
            break
        if word == "--index":
            chosen = next(words, None)
            if chosen is None:
                raise UsageError("--index expects a name")
        elif word.startswith("--index="):
            chosen = word[len("--index="):]
        else:
            rest.append(word)
    if chosen is not None:
        chosen_by = "option"
    elif env.get("QMDD_INDEX"):
        chosen_by = "environment"
    else:
        chosen = project_index(os.getcwd())
        chosen_by = "default" if chosen is None else "project"
    if chosen is not None:
        try:
            env["QMDD_INDEX"] = check_index_name(chosen)
        except QmddError as exc:
            raise UsageError(exc.message) from None
    return rest


def project_index(start: str) -> str | None:
    """The index named by the nearest `.qmd/qmdd-index` at or above `start`, if any."""
    folder = os.path.abspath(start)
    while True:
        marker = os.path.join(folder, PROJECT_DIR, PROJECT_MARKER)
        if _own_file(marker):
            return read_marker(marker)
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _own_file(path: str) -> bool:
    """A regular file of this user's (not a link): a marker another user planted above the current
    directory (in /tmp, say) is passed over, never obeyed."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and (st.st_mode & 0o170000) == 0o100000


def read_marker(marker: str) -> str:
    try:
        with open(marker, "rb") as f:
            raw = f.read(_MARKER_MAX_BYTES + 1)
        name = raw.decode("utf-8").strip()
        if len(raw) > _MARKER_MAX_BYTES:
            raise ValueError("too long")
        return check_index_name(name)
    except (OSError, ValueError, QmddError) as exc:
        # A marker checked into a repository is somebody else's text: never a path, never silently used.
        raise UsageError(f"{marker} does not name an index ({exc}); run `qmdctl init` there again, "
                         "or pass --index NAME") from None
