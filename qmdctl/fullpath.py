"""`--full-path` (get, multi-get, search, query): a document's on-disk path instead of its qmd:// URI and
docid, as qmd shows it: `./`-prefixed under the working directory, absolute (symlinks resolved) elsewhere.
A document whose file is gone keeps its URI and docid, and the command warns once on stderr. Stdlib only:
on the hot path of the commands that take the flag."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation


def render_full_path(absolute: str, cwd: str | None = None) -> str:
    """qmd's renderFullPath: `./` for the working directory itself, `./rel` below it, else the real path."""
    real = os.path.realpath(absolute)
    here = os.path.realpath(cwd if cwd is not None else os.getcwd())
    if real == here:
        return "./"
    if real.startswith(here + "/"):  # as qmd: under "/" itself, paths stay absolute
        return "./" + os.path.relpath(real, here)
    return real


class FullPaths:
    """Maps qmd:// URIs to what --full-path shows. The collection roots come from one `collection.list`
    request, made at the first lookup (so only when the flag is given)."""

    def __init__(self, client: Any, cwd: str | None = None) -> None:
        self._client = client
        self._cwd = cwd
        self._roots: dict[str, str] | None = None
        self.unresolved = 0
        self.total = 0

    def of(self, uri: str) -> str | None:
        """The path to show for `uri`, or None when its file is no longer on disk (it is then counted
        for `warning`)."""
        self.total += 1
        if self._roots is None:
            self._roots = {c["name"]: c["root"] for c in self._client.call("collection.list")}
        name, _, path = uri.removeprefix("qmd://").partition("/")
        root = self._roots.get(name)
        on_disk = os.path.join(root, path) if root is not None and path else None
        if on_disk is None or not os.path.exists(on_disk):
            self.unresolved += 1
            return None
        return render_full_path(on_disk, self._cwd)

    def warning(self) -> str | None:
        """qmd's notice when some documents kept their URI: the index is stale."""
        if not self.unresolved:
            return None
        subject = "the file" if self.total == 1 else f"{self.unresolved} of {self.total} results"
        return (f"warning: --full-path could not resolve {subject} on disk (moved or deleted since indexing); "
                "showing qmd:// + docid instead. Run 'qmdctl update' to refresh the index.")


def show_full_paths(inv: Invocation, entries: list[dict[str, Any]]) -> None:
    """--full-path: each entry's `file` becomes its on-disk path and its docid goes, as in qmd; one whose
    file is gone keeps both, and stderr says so."""
    if not inv.args["full_path"]:
        return
    paths = FullPaths(inv.client)
    for entry in entries:
        on_disk = paths.of(entry["file"])
        if on_disk is not None:
            entry["file"] = on_disk
            entry.pop("docid", None)
    warning = paths.warning()
    if warning:
        inv.output.warn(warning)
