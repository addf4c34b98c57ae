"""Walk one collection root and list the files to index.

Pure and synchronous (stdlib + pathspec): the indexer runs it in a worker thread.

Selection rules, applied identically by `walk_collection` and `PathFilter`:

* Masks use gitignore pattern semantics, relative to the root: a mask without a "/" (other than
  a trailing one) matches the basename at any depth (``*.txt`` == ``**/*.txt``); a mask with a
  "/" is anchored at the root (``docs/**/*.md``, ``/*.md`` for top level only); ``!pattern``
  removes matches of earlier masks; ``{a,b}`` alternations are expanded (qmd users write
  ``**/*.{md,markdown}``). Matching is case-sensitive, like git on Linux.
* Hidden names (leading ".") are skipped unless ``include_hidden``; directories named in
  ``vendor_dirs`` are skipped at any depth, hidden or not.
* ``excludes`` are gitignore patterns relative to the root and always win.
* ``.qmdignore`` files are always honoured; ``.gitignore`` files (and the root's
  ``.git/info/exclude``) when ``honor_gitignore``. Nested semantics as in git: patterns are
  relative to the directory holding the file, deeper files override shallower ones, and
  ``.qmdignore`` overrides ``.gitignore`` in the same directory. Ignore files above the root
  are not consulted.
* Excluded directories are never descended, so nothing inside them can be re-included.
"""

from __future__ import annotations

import os
import re
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from pathlib import Path

from qmdd.ignorefiles import DIR_MARK, Chain, Patterns, chain_ignored, compile_patterns, expand_braces, verdict
from qmdd.safefiles import ConfinedRoot, EscapesRoot

DEFAULT_MASKS: tuple[str, ...] = ("**/*.md",)

# qmd's list (node_modules, .git, .cache, vendor, dist, build) for parity of indexed sets, plus
# other VCS metadata, virtualenvs and tool caches. The hidden ones matter with include_hidden.
VENDOR_DIRS: frozenset[str] = frozenset({
    ".git", ".hg", ".svn", ".bzr", "_darcs", "node_modules", "bower_components", "jspm_packages", "vendor",
    ".venv", "venv", "site-packages", "__pycache__", ".tox", ".nox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".cache", "dist", "build",
})  # fmt: skip

GITIGNORE = ".gitignore"
QMDIGNORE = ".qmdignore"
IGNORE_FILES: frozenset[str] = frozenset({GITIGNORE, QMDIGNORE})

# "*.md" / "**/*.md": a basename suffix test is equivalent and much cheaper than a regex.
_SUFFIX_MASK_RE = re.compile(r"(?:\*\*/)?\*([^*?\[\]\\/\s{}!]+)")


@dataclass(frozen=True)
class WalkConfig:
    masks: tuple[str, ...] = DEFAULT_MASKS
    excludes: tuple[str, ...] = ()
    max_file_bytes: int = 10 * 1024 * 1024
    include_hidden: bool = False
    honor_gitignore: bool = True
    vendor_dirs: frozenset[str] = field(default=VENDOR_DIRS)

    def __post_init__(self) -> None:
        # Callers may pass lists; tuples keep the config hashable for the compile cache.
        object.__setattr__(self, "masks", tuple(self.masks))
        object.__setattr__(self, "excludes", tuple(self.excludes))
        object.__setattr__(self, "vendor_dirs", frozenset(self.vendor_dirs))
        if not self.masks:
            raise ValueError("WalkConfig.masks must not be empty")
        if self.max_file_bytes <= 0:
            raise ValueError("WalkConfig.max_file_bytes must be positive")
        _rules_for(self)  # bad patterns fail here, not in the middle of a scan


@dataclass(frozen=True, slots=True)
class FileStat:
    relpath: str
    size: int
    mtime_ns: int


BROKEN_LINK = "broken_link"
"""A symlink whose target is missing: indexed once the target appears (the watcher sees the target's
change, not the link's, so `indexing.update_paths` looks at these links again)."""


@dataclass(frozen=True, slots=True)
class WalkProblem:
    relpath: str
    # Stable codes: too_large, symlink_loop, outside_root, broken_link, unreadable, not_regular, bad_name.
    code: str
    message: str
    # A file the masks select, skipped (it counts among a scan's files); False for a directory, an
    # ignore file or an entry that could not be told apart.
    file: bool = False


@dataclass
class WalkResult:
    files: list[FileStat]
    problems: list[WalkProblem]
    dirs_scanned: int


def _bad_name(name: str) -> bool:
    # Undecodable bytes come back as lone surrogates, which SQLite and JSON cannot store.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escaped(name: str) -> str:
    """A name that is not UTF-8, its odd bytes written as \\xNN: what a problem report can store and show."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class _Rules:
    """A WalkConfig compiled once; shared by the walk and the single-path checks."""

    def __init__(self, config: WalkConfig) -> None:
        self.config = config
        self.hidden_ok = config.include_hidden
        self.vendor = config.vendor_dirs
        masks = [p for m in config.masks for p in expand_braces(m)]
        fast = [_SUFFIX_MASK_RE.fullmatch(m) for m in masks]
        self.suffixes = tuple(m.group(1) for m in fast if m) if all(fast) else None
        self.mask_patterns = compile_patterns(masks, strict=True)
        self.excludes = compile_patterns(list(config.excludes), strict=True)
        self.ignore_names = (GITIGNORE, QMDIGNORE) if config.honor_gitignore else (QMDIGNORE,)

    def dir_wanted(self, name: str, rel: str, chain: Chain) -> bool:
        """Whether the walk descends into directory `name` at `rel` (no trailing slash)."""
        if (name[0] == "." and not self.hidden_ok) or name in self.vendor:
            return False
        return not self._ignored(rel + "/", chain)

    def file_wanted(self, name: str, rel: str, chain: Chain) -> bool:
        """Whether file `name` at `rel` is selected, judging by its path alone."""
        if name[0] == "." and not self.hidden_ok:
            return False
        if self.suffixes is not None:
            if not name.endswith(self.suffixes):
                return False
        elif not self.mask_selects(rel):
            return False
        return not self._ignored(rel, chain)

    def mask_selects(self, rel: str) -> bool:
        # Masks select files by their own path: unlike gitignore matching, a match on an ancestor
        # directory ("*.md" vs "x.md/pic.png") selects nothing. Last match wins.
        for regex, include in self.mask_patterns:
            m = regex.search(rel)
            if m is not None and not m.groupdict().get(DIR_MARK):
                return include
        return False

    def _ignored(self, path: str, chain: Chain) -> bool:
        if self.excludes and verdict(self.excludes, path):
            return True
        return bool(chain) and chain_ignored(path, chain)


@lru_cache(maxsize=64)
def _rules_for(config: WalkConfig) -> _Rules:
    return _Rules(config)


def _read_ignore_spec(
    read: Callable[[str], bytes], names: tuple[str, ...], problems: list[WalkProblem] | None, prefix: str
) -> Patterns:
    # One spec per directory: .gitignore lines first so .qmdignore lines override them.
    lines: list[str] = []
    for name in names:
        try:
            lines.extend(read(name).decode("utf-8", errors="replace").splitlines())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if problems is not None:
                problems.append(WalkProblem(prefix + name, "unreadable", f"ignore file unreadable: {exc}"))
    return compile_patterns(lines)


def _base_chain(root: ConfinedRoot, rules: _Rules, problems: list[WalkProblem] | None) -> Chain:
    if not rules.config.honor_gitignore:
        return ()
    limit = rules.config.max_file_bytes
    spec = _read_ignore_spec(lambda name: root.read(".git/info/" + name, limit), ("exclude",), problems,
                             ".git/info/")
    return _with((), "", spec)


def _with(chain: Chain, prefix: str, spec: Patterns) -> Chain:
    return (*chain, (prefix, spec)) if spec else chain


_DirJob = tuple[str, Chain]  # (relpath, chain)


def walk_collection(root: Path | ConfinedRoot, config: WalkConfig = WalkConfig()) -> WalkResult:
    """List the selected regular files under `root` (a path is resolved first) with size and mtime.

    Raises FileNotFoundError / NotADirectoryError for a bad root; every other failure is a
    `WalkProblem`. Directories are opened through the root (`ConfinedRoot`): symlinks lead only
    inside it, even one swapped in mid-walk. Real directories are walked first, symlinked ones
    afterwards, so a link aliasing a directory already walked (or an ancestor: a cycle) is
    reported as `symlink_loop`, never walked twice.
    """
    if isinstance(root, ConfinedRoot):
        return _Walk(root, _rules_for(config)).run()
    with ConfinedRoot(os.path.realpath(root)) as confined:
        return _Walk(confined, _rules_for(config)).run()


class _Walk:
    def __init__(self, root: ConfinedRoot, rules: _Rules) -> None:
        self.root = root
        self.rules = rules
        self.files: list[FileStat] = []
        self.problems: list[WalkProblem] = []
        self.visited: dict[tuple[int, int], str] = {}
        self.stack: list[_DirJob] = [("", _base_chain(root, rules, self.problems))]
        self.deferred: deque[_DirJob] = deque()
        self.dirs_scanned = 0

    def problem(self, rel: str, code: str, message: str, *, file: bool = False) -> None:
        self.problems.append(WalkProblem(rel, code, message, file))

    def run(self) -> WalkResult:
        while self.stack or self.deferred:
            dir_rel, chain = self.stack.pop() if self.stack else self.deferred.popleft()
            self.scan(dir_rel, chain)
        self.files.sort(key=attrgetter("relpath"))
        self.problems.sort(key=lambda p: (p.relpath, p.code))
        return WalkResult(self.files, self.problems, self.dirs_scanned)

    def scan(self, dir_rel: str, chain: Chain) -> None:
        # Listing through a directory fd makes each DirEntry.stat() an fstatat() of one name
        # rather than a full path lookup (~15% off a no-change rescan).
        fd = -1
        try:
            fd = self.root.open_dir(dir_rel)
            st = os.fstat(fd)
            # The directory opened decides, not its path: a link swapped in mid-walk cannot get
            # one directory listed twice.
            seen = self.visited.setdefault((st.st_dev, st.st_ino), dir_rel)
            if seen != dir_rel:
                cycle = seen == "" or dir_rel.startswith(seen + "/")
                what = "links back to ancestor" if cycle else "duplicates directory already walked as"
                self.problem(dir_rel, "symlink_loop", f"{what} {seen or '.'!r}; skipped")
                return
            with os.scandir(fd) as it:
                entries = list(it)
            self.dirs_scanned += 1
            self.scan_entries(entries, fd, dir_rel, chain)  # raises no OSError: each entry reports its own
        except EscapesRoot as exc:  # a directory on the way became a link out, mid-walk
            self.problem(dir_rel, "outside_root", str(exc))
        except FileNotFoundError:
            pass  # vanished mid-walk: nothing to report
        except OSError as exc:
            self.problem(dir_rel or ".", "unreadable", f"cannot list directory: {exc}")
        finally:
            if fd >= 0:
                os.close(fd)  # only now: the entries stat() relative to it

    def scan_entries(self, entries: list[os.DirEntry[str]], dir_fd: int, dir_rel: str, chain: Chain) -> None:
        rules, files, max_bytes = self.rules, self.files, self.rules.config.max_file_bytes
        prefix = dir_rel + "/" if dir_rel else ""
        # Two failed opens per directory are cheaper than scanning the entry names for them.
        spec = _read_ignore_spec(lambda name: self.root.read_in(dir_fd, dir_rel, name, max_bytes),
                                 rules.ignore_names, self.problems, prefix)
        chain = _with(chain, prefix, spec)
        # Common case (suffix masks, no pattern to consult): skip the per-file method call.
        fast = rules.suffixes is not None and not chain and not rules.excludes
        suffixes, hidden_ok = rules.suffixes or (), rules.hidden_ok

        for entry in entries:
            name = entry.name
            try:
                if entry.is_file(follow_symlinks=False):
                    if fast:
                        if (name[0] == "." and not hidden_ok) or not name.endswith(suffixes):
                            continue
                    elif not rules.file_wanted(name, prefix + name, chain):
                        continue
                    if not name.isascii() and _bad_name(name):
                        self.problem(_escaped(prefix + name), "bad_name", "name is not valid UTF-8", file=True)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_size <= max_bytes:
                        files.append(FileStat(prefix + name, st.st_size, st.st_mtime_ns))
                    else:
                        self.admit(prefix + name, st)  # records the too_large problem
                elif entry.is_dir(follow_symlinks=False):
                    rel = prefix + name
                    if not rules.dir_wanted(name, rel, chain):
                        continue
                    if _bad_name(name):
                        self.problem(_escaped(rel), "bad_name", "name is not valid UTF-8")
                        continue
                    self.stack.append((rel, chain))
                elif entry.is_symlink():
                    self.follow_link(entry, prefix + name, chain)
                elif rules.file_wanted(name, prefix + name, chain):
                    self.problem(prefix + name, "not_regular", "not a regular file", file=True)
            except FileNotFoundError:
                continue  # deleted between listing and stat
            except OSError as exc:
                self.problem(prefix + name, "unreadable", str(exc))

    def admit(self, rel: str, st: os.stat_result) -> None:
        admitted = admit_file(rel, st, self.rules.config.max_file_bytes)
        if isinstance(admitted, WalkProblem):
            self.problems.append(admitted)
        else:
            self.files.append(admitted)

    def follow_link(self, entry: os.DirEntry[str], rel: str, chain: Chain) -> None:
        name, rules = entry.name, self.rules
        try:
            st = self.root.stat(rel)  # followed inside the root only, as every read later is
        except EscapesRoot as exc:
            # Only worth reporting when it would have been selected; the target's type (a stat,
            # never a read) says whether the directory or the file rules judge it.
            is_dir = self.link_is_dir(entry)
            if (rules.dir_wanted if is_dir else rules.file_wanted)(name, rel, chain):
                self.problem(rel, "outside_root", str(exc), file=not is_dir)
            return
        except OSError as exc:
            # Broken link: only worth reporting when it would have been indexed.
            if rules.file_wanted(name, rel, chain):
                self.problem(rel, BROKEN_LINK, f"broken symlink: {exc}", file=True)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        # Path-based rules judge the link by its own name, as for any other entry.
        if not (rules.dir_wanted(name, rel, chain) if is_dir else rules.file_wanted(name, rel, chain)):
            return
        if _bad_name(name):
            self.problem(_escaped(rel), "bad_name", "name is not valid UTF-8", file=not is_dir)
        elif is_dir:
            self.deferred.append((rel, chain))  # opened through the link again, inside the root
        else:
            self.admit(rel, st)

    @staticmethod
    def link_is_dir(entry: os.DirEntry[str]) -> bool:
        try:
            return entry.is_dir()
        except OSError:
            return False


def admit_file(rel: str, st: os.stat_result, max_bytes: int) -> FileStat | WalkProblem:
    """A selected path's verdict from its stat: indexable, or why not (the walk's and the watcher's)."""
    if not stat.S_ISREG(st.st_mode):
        return WalkProblem(rel, "not_regular", "not a regular file", file=True)
    if st.st_size > max_bytes:
        return WalkProblem(rel, "too_large", f"{st.st_size} bytes exceeds the {max_bytes}-byte limit", file=True)
    return FileStat(rel, st.st_size, st.st_mtime_ns)


def masks_select(masks: Sequence[str], excludes: Sequence[str], relpath: str) -> bool:
    """Whether masks and excludes select `relpath`, judging by the path alone (ignore files, hidden
    names and vendor directories aside): which of two collections of one folder a file belongs to."""
    try:
        rules = _rules_for(WalkConfig(masks=tuple(masks), excludes=tuple(excludes)))
    except ValueError:
        return False
    return rules.mask_selects(relpath) and not (rules.excludes and verdict(rules.excludes, relpath))


class PathFilter:
    """Single-path version of the walk's selection for the file watcher, gitignore included.

    `included(relpath)` answers what `walk_collection` would decide from the path alone (masks,
    hidden, vendor, excludes, ignore files of the root and every ancestor directory); it does
    not look at file type, size or symlink targets. Ignore files are read lazily and cached for the
    filter's lifetime: when one changes (a name in `IGNORE_FILES`), build a new filter.
    """

    def __init__(self, root: Path, config: WalkConfig = WalkConfig()) -> None:
        self._root = os.path.realpath(root)
        self._rules = _rules_for(config)
        self._specs: dict[str, Patterns] = {}
        with ConfinedRoot(self._root) as confined:  # FileNotFoundError / NotADirectoryError for a bad root
            self._base = _base_chain(confined, self._rules, None)

    def _dir_spec(self, prefix: str) -> Patterns:
        if prefix not in self._specs:
            limit = self._rules.config.max_file_bytes
            with ConfinedRoot(self._root) as root:
                self._specs[prefix] = _read_ignore_spec(lambda name: root.read(prefix + name, limit),
                                                        self._rules.ignore_names, None, prefix)
        return self._specs[prefix]

    def included(self, relpath: str) -> bool:
        # Only clean relpaths as the walk produces them; anything else is never selected.
        parts = relpath.split("/")
        if "\0" in relpath or any(p in ("", ".", "..") for p in parts):
            return False
        rules, chain, prefix = self._rules, self._base, ""
        for depth, name in enumerate(parts):
            chain = _with(chain, prefix, self._dir_spec(prefix))
            if depth == len(parts) - 1:
                return rules.file_wanted(name, prefix + name, chain)
            if not rules.dir_wanted(name, prefix + name, chain):
                return False
            prefix += name + "/"
        return False
