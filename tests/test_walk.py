from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from qmdd import ignorefiles
from qmdd import walk as walk_mod
from qmdd.safefiles import ConfinedRoot, EscapesRoot
from qmdd.walk import (
    DEFAULT_MASKS,
    VENDOR_DIRS,
    FileStat,
    PathFilter,
    WalkConfig,
    WalkProblem,
    WalkResult,
    walk_collection,
)


def make(root: Path, *relpaths: str, content: str = "# x\n") -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def paths(result: WalkResult) -> list[str]:
    return [f.relpath for f in result.files]


def problems(result: WalkResult) -> list[tuple[str, str]]:
    return [(p.relpath, p.code) for p in result.problems]


def walk(root: Path, **kw: object) -> WalkResult:
    return walk_collection(root, WalkConfig(**kw))  # type: ignore[arg-type]


# --- masks -------------------------------------------------------------------------------


def test_default_masks_sorted_with_stat(tmp_path: Path) -> None:
    make(tmp_path, "b.md", "a/z.md", "a/b/c.md", "x.txt", "y.MD", "mdfile")
    res = walk_collection(tmp_path)
    assert paths(res) == ["a/b/c.md", "a/z.md", "b.md"]
    st = (tmp_path / "b.md").stat()
    assert res.files[-1] == FileStat("b.md", st.st_size, st.st_mtime_ns)
    assert res.problems == []
    assert res.dirs_scanned == 3
    assert WalkConfig().masks == DEFAULT_MASKS


def test_multiple_masks_basename_matches_any_depth(tmp_path: Path) -> None:
    make(tmp_path, "a.md", "d/b.txt", "d/e/c.txt", "d/e/f.rst")
    assert paths(walk(tmp_path, masks=("*.md", "*.txt"))) == ["a.md", "d/b.txt", "d/e/c.txt"]


def test_dir_scoped_and_anchored_masks(tmp_path: Path) -> None:
    make(tmp_path, "top.md", "docs/a.md", "docs/x/b.md", "other/docs/c.md", "other/d.md")
    assert paths(walk(tmp_path, masks=("docs/**/*.md",))) == ["docs/a.md", "docs/x/b.md"]
    assert paths(walk(tmp_path, masks=("/*.md",))) == ["top.md"]


def test_brace_and_negated_masks(tmp_path: Path) -> None:
    make(tmp_path, "a.md", "b.markdown", "c.txt", "d/draft-1.md", "d/final.md")
    assert paths(walk(tmp_path, masks=("**/*.{md,markdown}",))) == [
        "a.md",
        "b.markdown",
        "d/draft-1.md",
        "d/final.md",
    ]
    assert paths(walk(tmp_path, masks=("**/*.md", "!draft-*"))) == ["a.md", "d/final.md"]


@given(
    dirs=st.lists(st.text(alphabet="ab.md", min_size=1, max_size=5), max_size=3),
    name=st.text(alphabet="ab.-_ *?[]md", min_size=1, max_size=8),
    suffix=st.text(alphabet="abm.d_", min_size=1, max_size=4),
    anchored=st.booleans(),
)
def test_suffix_fast_path_agrees_with_general_path(dirs: list[str], name: str, suffix: str, anchored: bool) -> None:
    mask = ("**/*" if anchored else "*") + suffix
    rel = "/".join([*dirs, name])
    rules = walk_mod._Rules(WalkConfig(masks=(mask,)))
    assert rules.suffixes == (suffix,)
    assert rules.mask_selects(rel) == name.endswith(suffix)
    if not any(d.endswith(suffix) for d in dirs):  # gitignore would also match inside such dirs
        assert rules.mask_selects(rel) == GitIgnoreSpec.from_lines([mask]).match_file(rel)


_PATTERN_PIECES = ["a", "b", "*", "**", "?", ".md", "/", "!", "[ab]", "x"]


@settings(max_examples=500)
@example(lines=["**/", "*/*[ab]**"], path=["x", "x"], is_dir=True)
@example(lines=["x/", "!*/"], path=["x", "x", "a.md"], is_dir=False)
@given(
    lines=st.lists(st.lists(st.sampled_from(_PATTERN_PIECES), min_size=1, max_size=5).map("".join), max_size=6),
    path=st.lists(st.sampled_from(["a", "b", "x", "a.md", "ab", "x.md"]), min_size=1, max_size=4),
    is_dir=st.booleans(),
)
def test_ignore_verdict_matches_pathspec(lines: list[str], path: list[str], is_dir: bool) -> None:
    try:
        spec = GitIgnoreSpec.from_lines(lines)
    except (ValueError, re.error):  # "!", "[b-a]": covered by test_invalid_patterns
        return
    rel = "/".join(path) + ("/" if is_dir else "")
    assert ignorefiles.verdict(ignorefiles.compile_patterns(lines), rel) == spec.check_file(rel).include


def test_masks_select_files_not_directory_contents(tmp_path: Path) -> None:
    make(tmp_path, "x.md/pic.txt", "x.md/real.md", "docs/a.txt", "docs/sub/b.txt", "other/c.txt")
    assert paths(walk(tmp_path, masks=("*.md", "docs/*.txt"))) == ["docs/a.txt", "x.md/real.md"]
    assert paths(walk(tmp_path, masks=("docs/**", "!*.md"))) == ["docs/a.txt", "docs/sub/b.txt"]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WalkConfig(masks=())
    with pytest.raises(ValueError):
        WalkConfig(max_file_bytes=0)
    for bad in ("!", "[z-a].md", "\\"):
        with pytest.raises(ValueError, match="invalid pattern"):
            WalkConfig(masks=(bad,))
        with pytest.raises(ValueError, match="invalid pattern"):
            WalkConfig(excludes=(bad,))
    cfg = WalkConfig(masks=["*.md"], excludes=["x/"])  # type: ignore[arg-type]
    assert cfg.masks == ("*.md",) and cfg.excludes == ("x/",)
    hash(cfg)


# --- excludes and ignore files -----------------------------------------------------------


def test_excludes_prune_and_win_over_gitignore_negation(tmp_path: Path) -> None:
    make(tmp_path, "keep.md", "archive/old.md", "archive/deep/older.md", "a/note.tmp.md", "a/ok.md")
    (tmp_path / ".gitignore").write_text("!archive/\n!*.tmp.md\n")
    res = walk(tmp_path, excludes=("archive/", "*.tmp.md"))
    assert paths(res) == ["a/ok.md", "keep.md"]
    assert res.dirs_scanned == 2  # archive/ never listed


def test_nested_gitignore_negation_dir_only_and_anchoring(tmp_path: Path) -> None:
    make(
        tmp_path,
        "secret.md",
        "x.log.md",
        "old.md/inside.md",
        "sub/old.md",
        "sub/secret.md",
        "sub/local.md",
        "sub/anchored.md",
        "sub/deeper/anchored.md",
        "sub/deeper/local.md",
        "sub/deeper/x.log.md",
        "other/local.md",
    )
    (tmp_path / ".gitignore").write_text("# comment\n*.log.md\nold.md/\nsecret.md\n")
    (tmp_path / "sub" / ".gitignore").write_text("!secret.md\nlocal.md\n/anchored.md\n")
    (tmp_path / "sub" / "deeper" / ".gitignore").write_text("!x.log.md\n")
    assert paths(walk_collection(tmp_path)) == [
        "other/local.md",
        "sub/deeper/anchored.md",
        "sub/deeper/x.log.md",
        "sub/old.md",
        "sub/secret.md",
    ]


def test_invalid_ignore_file_lines_are_skipped(tmp_path: Path) -> None:
    make(tmp_path, "a.md", "b.md", "c.md")
    (tmp_path / ".gitignore").write_text("!\n[z-a]\nb.md\n\\\n")
    assert paths(walk_collection(tmp_path)) == ["a.md", "c.md"]
    assert not PathFilter(tmp_path).included("b.md")


def test_git_info_exclude_qmdignore_and_honor_flag(tmp_path: Path) -> None:
    make(tmp_path, "a.md", "b.md", "c.md", "d.md")
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("a.md\n")
    (tmp_path / ".gitignore").write_text("b.md\nc.md\n")
    (tmp_path / ".qmdignore").write_text("!c.md\nd.md\n")
    assert paths(walk_collection(tmp_path)) == ["c.md"]
    assert paths(walk(tmp_path, honor_gitignore=False)) == ["a.md", "b.md", "c.md"]


def test_ignored_directory_is_not_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "a.md", "gen/x.md", "node_modules/p/README.md", ".hidden/y.md")
    (tmp_path / ".gitignore").write_text("gen/\n")
    listed: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, *args: int, dir_fd: int | None = None) -> int:
        fd = real_open(path, flags, *args, dir_fd=dir_fd)
        if flags & os.O_DIRECTORY and dir_fd is not None:  # a directory below the root, listed or passed
            listed.append(path)
        return fd

    monkeypatch.setattr(walk_mod.os, "open", spy)
    assert paths(walk_collection(tmp_path)) == ["a.md"]
    assert listed == ["."]


# --- hidden and vendor -------------------------------------------------------------------


def test_hidden_and_vendor_skipped(tmp_path: Path) -> None:
    make(
        tmp_path,
        "a.md",
        ".dot.md",
        ".hidden/b.md",
        "node_modules/c.md",
        "x/node_modules/d.md",
        "x/__pycache__/e.md",
        ".git/f.md",
        "x/build.md",
    )
    assert paths(walk_collection(tmp_path)) == ["a.md", "x/build.md"]
    assert paths(walk(tmp_path, include_hidden=True)) == [".dot.md", ".hidden/b.md", "a.md", "x/build.md"]
    everything = walk(tmp_path, include_hidden=True, vendor_dirs=frozenset())
    assert len(everything.files) == 8
    assert {"node_modules", ".git", "__pycache__", "vendor"} <= VENDOR_DIRS


# --- size, special files, names ----------------------------------------------------------


def test_size_guard(tmp_path: Path) -> None:
    (tmp_path / "ok.md").write_bytes(b"x" * 10)
    (tmp_path / "big.md").write_bytes(b"x" * 11)
    res = walk(tmp_path, max_file_bytes=10)
    assert paths(res) == ["ok.md"]
    assert problems(res) == [("big.md", "too_large")]


def test_fifo_is_not_regular(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.md")
    os.mkfifo(tmp_path / "pipe.bin")
    res = walk_collection(tmp_path)
    assert res.files == []
    assert problems(res) == [("pipe.md", "not_regular")]


def test_undecodable_name_reported(tmp_path: Path) -> None:
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.md"), "w"):
            pass
    except OSError:
        pytest.skip("filesystem rejects non-UTF-8 names")
    make(tmp_path, "good-é.md")
    res = walk_collection(tmp_path)
    assert paths(res) == ["good-é.md"]
    assert [(p.relpath, p.code) for p in res.problems] == [("bad\\xff.md", "bad_name")]  # storable, shown escaped


# --- symlinks ----------------------------------------------------------------------------


def test_symlinks_inside_and_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    make(root, "real/a.md", ".stash/s.md", "pic.png")
    make(outside, "o.md", "od/p.md")
    (root / "link.md").symlink_to(root / "real" / "a.md")
    (root / "rel-link.md").symlink_to("real/a.md")
    (root / "out.md").symlink_to(outside / "o.md")
    (root / "outdir").symlink_to(outside / "od")
    (root / "stash").symlink_to(".stash")  # hidden target, visible link: walked via the link
    (root / "broken.md").symlink_to(root / "nope.md")
    (root / "pic-link.png").symlink_to(outside / "o.md")  # not selected: no problem
    res = walk_collection(root)
    assert paths(res) == ["link.md", "real/a.md", "rel-link.md", "stash/s.md"]
    assert res.files[0].size == (root / "real" / "a.md").stat().st_size
    assert problems(res) == [
        ("broken.md", "broken_link"),
        ("out.md", "outside_root"),
        ("outdir", "outside_root"),
    ]


def test_symlink_loops_terminate(tmp_path: Path) -> None:
    make(tmp_path, "a/b/x.md")
    (tmp_path / "a" / "b" / "up").symlink_to("..")
    (tmp_path / "a" / "root").symlink_to(tmp_path)
    (tmp_path / "alias").symlink_to("a/b")
    (tmp_path / "self").symlink_to("self")  # ELOOP on stat: not selected, so silent
    res = walk_collection(tmp_path)
    assert paths(res) == ["a/b/x.md"]
    assert problems(res) == [
        ("a/b/up", "symlink_loop"),
        ("a/root", "symlink_loop"),
        ("alias", "symlink_loop"),
    ]
    messages = {p.relpath: p.message for p in res.problems}
    assert "ancestor" in messages["a/b/up"] and "duplicates" in messages["alias"]


def test_symlinked_root(tmp_path: Path) -> None:
    make(tmp_path, "real/a.md")
    (tmp_path / "lnk").symlink_to(tmp_path / "real")
    assert paths(walk_collection(tmp_path / "lnk")) == ["a.md"]


# --- errors ------------------------------------------------------------------------------


def test_unreadable_dir_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "a.md", "locked/b.md", "open/c.md")
    real_open = os.open

    def fake_open(path: str, flags: int, *args: int, dir_fd: int | None = None) -> int:
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, dir_fd=dir_fd)

    monkeypatch.setattr(walk_mod.os, "open", fake_open)
    res = walk_collection(tmp_path)
    assert paths(res) == ["a.md", "open/c.md"]
    assert problems(res) == [("locked", "unreadable")]
    assert res.dirs_scanned == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unreadable_dir_chmod(tmp_path: Path) -> None:
    make(tmp_path, "a.md", "locked/b.md")
    (tmp_path / "locked").chmod(0)
    try:
        res = walk_collection(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert paths(res) == ["a.md"]
    assert problems(res) == [("locked", "unreadable")]


def test_bad_roots_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        walk_collection(tmp_path / "missing")
    make(tmp_path, "f.md")
    with pytest.raises(NotADirectoryError):
        walk_collection(tmp_path / "f.md")
    with pytest.raises(FileNotFoundError):
        PathFilter(tmp_path / "missing")


# --- single-path filters -----------------------------------------------------------------


def test_path_filter_agrees_with_walk(tmp_path: Path) -> None:
    make(
        tmp_path,
        "a.md",
        "b.txt",
        ".h.md",
        "gen/x.md",
        "sub/keep.md",
        "sub/drop.md",
        "sub/deep/drop.md",
        "vendor/v.md",
        "ex/e.md",
    )
    (tmp_path / ".gitignore").write_text("gen/\n")
    (tmp_path / "sub" / ".qmdignore").write_text("drop.md\n")
    cfg = WalkConfig(excludes=("ex/",))
    walked = set(paths(walk_collection(tmp_path, cfg)))
    flt = PathFilter(tmp_path, cfg)
    all_files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p for p in all_files if flt.included(p)} == walked == {"a.md", "sub/keep.md"}
    assert not flt.included("gen/x.md")
    assert PathFilter(tmp_path, WalkConfig(excludes=("ex/",), honor_gitignore=False)).included("gen/x.md")
    for bad in ("", "/a.md", "./a.md", "x/../a.md", "a//b.md", "a\0.md"):
        assert not flt.included(bad)
    (tmp_path / "sub" / ".qmdignore").write_text("")
    assert not flt.included("sub/drop.md")  # ignore files are cached for the filter's lifetime
    assert PathFilter(tmp_path, cfg).included("sub/drop.md")  # what the indexer builds after the change


def test_path_filter_mask_rules(tmp_path: Path) -> None:
    flt = PathFilter(tmp_path, WalkConfig(masks=("*.md", "docs/**/*.txt"), excludes=("tmp/",)))
    assert flt.included("a/b.md")
    assert flt.included("docs/x/y.txt")
    assert not flt.included("other/y.txt")
    assert not flt.included("tmp/a.md")
    assert not flt.included("a/.b.md")
    assert not flt.included(".h/b.md")
    assert not flt.included("node_modules/b.md")
    assert flt.included("node_modules.md")  # vendor names only prune directories


# --- confined reads ----------------------------------------------------------------------


def test_confined_root_reads_inside_and_refuses_the_way_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    make(root, "a/b.md", content="inside\n")
    make(outside, "secret.md")
    (root / "in-link.md").symlink_to("a/b.md")
    (root / "abs-link.md").symlink_to(root / "a" / "b.md")
    (root / "up-and-in.md").symlink_to("../root/a/b.md")
    (root / "escape.md").symlink_to(outside / "secret.md")
    (root / "escape-dir").symlink_to(outside)
    with ConfinedRoot(str(root)) as confined:
        for good in ("a/b.md", "in-link.md", "abs-link.md", "up-and-in.md"):
            assert confined.read(good, 100) == b"inside\n"
        with pytest.raises(FileNotFoundError):
            confined.read("a/missing.md", 100)
        bad_paths = ["../outside/secret.md", "a/../../x", "..", "/etc/passwd", "a\0b", "a//b.md", "./a/b.md"]
        for bad in [*bad_paths, "escape.md", "escape-dir/secret.md"]:
            with pytest.raises(EscapesRoot):
                confined.read(bad, 100)


def test_problem_is_hashable_value() -> None:
    assert WalkProblem("a", "too_large", "m") == WalkProblem("a", "too_large", "m")
    assert len({WalkProblem("a", "x", "m"), WalkProblem("a", "x", "m")}) == 1
