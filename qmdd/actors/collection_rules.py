"""The rules a new collection must meet: its name, and its root (a folder, and no duplicate of another
collection); and the typed errors for the filesystem failures met touching a collection's files."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.safefiles import ConfinedRoot, RootChanged, RootKey
from qmdd.store.documents import CollectionRow

NAME_MAX_CHARS = 100
NAME_RULE = (f"a collection name is 1-{NAME_MAX_CHARS} letters, digits, '_', '.' or '-', and starts with a letter, "
             "a digit or '_'")
# Letters and digits of any script, with the combining marks some scripts need. Left out: controls and
# format characters (bidi overrides that reorder what a terminal shows), spaces, and every symbol a
# shell, a URI or a `FILE:LINE` target gives a meaning to ('$', '(', '/', ':', '#', ...).
_NAME_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Mn", "Mc"})
_NAME_PUNCTUATION = frozenset("_.-")


def check_collection_name(name: str) -> str:
    """A new collection name (add, rename), or INVALID_INPUT with the rule. Names already in SQLite
    are never checked again: a collection with an older, looser name keeps working and can be renamed."""
    name = name.strip()
    valid = (0 < len(name) <= NAME_MAX_CHARS
             and (name[0] == "_" or unicodedata.category(name[0]) in _NAME_CATEGORIES - {"Mn", "Mc"})
             and all(c in _NAME_PUNCTUATION or unicodedata.category(c) in _NAME_CATEGORIES for c in name))
    if not valid:
        raise QmddError(ErrorCode.INVALID_INPUT, f"invalid collection name {name!r}",
                        hints=(f"Choose another name: {NAME_RULE}.",
                               "`qmdctl collection add` names a collection after its folder unless --name is given."),
                        details={"rule": NAME_RULE})
    return name


def filesystem_error(exc: OSError, what: str) -> QmddError:
    """Map an OSError met while touching a collection's files onto a typed error."""
    if isinstance(exc, RootChanged):
        return QmddError(ErrorCode.PERMISSION_DENIED, f"{what}: {exc}",
                         hints=("A symlink or another folder took the root's place since the collection was added.",
                                "If the folder there now is the one to index, re-add the collection: "
                                "`qmdctl collection remove NAME`, then `qmdctl collection add PATH --name NAME`."))
    if isinstance(exc, PermissionError):
        return QmddError(ErrorCode.PERMISSION_DENIED, f"{what}: permission denied",
                         hints=("Give the daemon's user read access, or remove the collection.",))
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return QmddError(ErrorCode.PATH_NOT_FOUND, f"{what}: {exc.strerror or exc}",
                         hints=("Reconnect the disk or restore the folder, or remove the collection.",))
    return QmddError(ErrorCode.FILE_UNREADABLE, f"{what}: {exc.strerror or exc}")


def check_new_root(path: str, masks: list[str], excludes: list[str],
                   existing: list[CollectionRow]) -> tuple[Path, RootKey]:
    """Validate a new collection root against the filesystem and the other collections; the resolved
    root and the identity to pin. As in qmd, a folder may be in several collections (other --mask, a
    subfolder, a parent folder): each is its own view, indexed, watched and searched apart. Only a
    second collection of the same folder with the same masks and excludes, which could never hold
    anything the first does not, is refused."""
    root = Path(path).expanduser()
    if not root.is_absolute():
        raise QmddError(ErrorCode.INVALID_INPUT, f"collection path must be absolute: {path}")
    try:
        if not root.is_dir():
            raise QmddError(ErrorCode.PATH_NOT_FOUND, f"not a directory: {root}")
        root = root.resolve(strict=True)
        with ConfinedRoot(str(root)) as opened:
            root_key = opened.key
    except OSError as exc:
        raise filesystem_error(exc, str(root)) from None
    for other in existing:
        # Order and repeats do not change what a set of masks selects.
        if Path(other.root) == root and set(other.masks) == set(masks) and set(other.excludes) == set(excludes):
            raise QmddError(ErrorCode.COLLECTION_OVERLAP,
                            f"collection {other.name!r} already indexes {root} with the masks {', '.join(masks)}",
                            hints=(f"`qmdctl update -c {other.name}` rescans it.",
                                   "For another view of this folder, give other --mask (or --exclude) patterns."),
                            details={"collection": other.name})
    return root, root_key
