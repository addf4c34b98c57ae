"""`qmdctl skill show|install` and `qmdctl skills list|get|path`: the agent skill shipped with qmdctl, as
qmd's commands do it (qmd's skill is `qmd`; ours is `qmdd`, so both can be installed side by side).

`skill install` writes, as qmd does, a small bootstrap SKILL.md that loads the version-matched text from
`qmdctl skill show` (so an install never goes stale), plus the skill's references. It writes under the
current directory (or the home directory) without following a symlink anywhere below it: each directory
is opened with O_NOFOLLOW relative to its parent, each file is written to a new name and renamed over
the old, so a link planted at `.agents`, `skills`, `qmdd` or a file name is refused (or, for a file, with
--force replaced) but never written through. A file that differs from what would be written is replaced
only with --force; an identical one is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation

SKILL_NAME = "qmdd"
SKILL_FILE = "SKILL.md"
EXTRA_DIRS = ("references", "templates", "scripts")
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "skills")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

BOOTSTRAP = f"""---
name: {SKILL_NAME}
description: Bootstrap qmdd search instructions from the installed qmdctl. Use when users ask to find notes, \
retrieve documents, inspect a wiki, or answer from indexed local markdown.
license: MIT
compatibility: Requires qmdctl (pip install qmdd). Run `qmdctl skill show` for version-matched instructions.
allowed-tools: Bash(qmdctl:*), mcp__qmdd__*
---

# qmdd - local document search

This installed skill is a small bootstrap so that it does not go stale when qmdd is upgraded.

Load the full, version-matched instructions from the CLI:

!`qmdctl skill show`

If your agent does not expand bang commands, run:

```bash
qmdctl skill show
```

Then follow them. In short: search first (`qmdctl search`, `qmdctl query`), read the sources with
`qmdctl get` or `qmdctl multi-get`, and answer from the text you read, not from snippets.
"""


# --- discovery ----------------------------------------------------------------------------------------------

def skills_dir() -> str:
    """Where the skills are: QMDD_SKILLS_DIR (as qmd's QMD_SKILLS_DIR), else the ones shipped with qmdctl."""
    return os.environ.get("QMDD_SKILLS_DIR") or BUNDLED


def frontmatter(text: str) -> dict[str, Any] | None:
    """name, description (folded continuation lines joined) and hidden, as qmd parses them; None without a name."""
    body = text.lstrip()
    if not body.startswith("---"):
        return None
    end = body.find("\n---", 3)
    if end < 0:
        return None
    fields: dict[str, Any] = {"name": "", "description": "", "hidden": False}
    lines = body[3:end].splitlines()
    i = 0
    while i < len(lines):
        key, _, value = lines[i].partition(":")
        if key in ("name", "hidden"):
            fields[key] = value.strip() if key == "name" else value.strip().lower() in ("true", "yes")
        elif key == "description":
            parts = [value.strip()]
            while i + 1 < len(lines) and lines[i + 1][:1].isspace() and lines[i + 1].strip():
                i += 1
                parts.append(lines[i].strip())
            fields["description"] = " ".join(parts)
        i += 1
    return fields if fields["name"] else None


def discover() -> list[dict[str, Any]]:
    """Every folder of the skills dir with a SKILL.md that has a name, sorted by name."""
    root = skills_dir()
    found = []
    for entry in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        folder = os.path.join(root, entry)
        try:
            with open(os.path.join(folder, SKILL_FILE), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        fields = frontmatter(text)
        if fields is not None:
            found.append({**fields, "dir": folder, "content": text})
    return sorted(found, key=lambda s: s["name"])


def find(name: str) -> dict[str, Any]:
    for skill in discover():
        if skill["name"] == name:
            return skill
    names = [s["name"] for s in discover() if not s["hidden"]]
    raise QmddError(ErrorCode.NOT_FOUND, f"no skill named {name!r}",
                    hints=(f"Skills: {', '.join(names) or 'none'} (`qmdctl skills list`).",),
                    details={"candidates": names})


def extra_files(skill: dict[str, Any]) -> list[dict[str, str]]:
    """Its references/, templates/ and scripts/ files (one level, as qmd reads them)."""
    files = []
    for sub in EXTRA_DIRS:
        folder = os.path.join(skill["dir"], sub)
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            path = os.path.join(folder, entry)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    files.append({"path": f"{sub}/{entry}", "content": f.read()})
    return files


def _text(content: str) -> str:
    return content if content.endswith("\n") else content + "\n"


# --- skills list|get|path, skill show -------------------------------------------------------------------

def list_(inv: Invocation) -> int:
    rows = [{"name": s["name"], "description": s["description"]} for s in discover() if not s["hidden"]]
    if inv.output.fmt in ("text", "cli"):
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            inv.output.line(f"  {r['name'].ljust(width)}  {r['description']}")
        if not rows:
            inv.output.line("No skills found")
    else:
        inv.output.table(rows, ("name", "description"))
    return 0


def get(inv: Invocation) -> int:
    name, full = inv.args.get("name"), bool(inv.args.get("full"))
    if inv.args.get("all"):
        targets = [s for s in discover() if not s["hidden"]]
    elif name:
        targets = [find(name)]
    else:
        raise QmddError(ErrorCode.INVALID_INPUT, "no skill name given",
                        hints=("`qmdctl skills get qmdd` (or --all); `qmdctl skills list` names them.",))
    docs = [{"name": s["name"], "content": s["content"], **({"files": extra_files(s)} if full else {})}
            for s in targets]
    out = inv.output
    if out.fmt == "json":
        out.json(docs)
    elif out.fmt == "ndjson":
        for doc in docs:
            out.record("result", doc)
    else:
        for index, doc in enumerate(docs):
            if index:
                out.line("\n---\n")
            out.write(_text(doc["content"]))
            for extra in doc.get("files", ()):
                out.line(f"\n--- {extra['path']} ---\n")
                out.write(_text(extra["content"]))
    return 0


def path(inv: Invocation) -> int:
    name = inv.args.get("name")
    if name:
        skill = find(name)
        inv.output.value({"name": skill["name"], "path": skill["dir"]}, lambda v: inv.output.line(v["path"]))
    else:
        inv.output.value({"paths": [skills_dir()]}, lambda v: inv.output.line(v["paths"][0]))
    return 0


def show(inv: Invocation) -> int:
    skill = find(SKILL_NAME)
    inv.output.value({"name": skill["name"], "path": skill["dir"], "content": skill["content"]},
                     lambda v: inv.output.write(_text(v["content"])))
    return 0


# --- skill install ----------------------------------------------------------------------------------------

def _open_dir(parent: int, name: str, shown: str) -> int:
    """The directory `name` under the open directory `parent`, created (0755) if missing; never a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise QmddError(ErrorCode.PERMISSION_DENIED, f"refusing {shown}: it is a symlink or not a directory",
                            hints=("A link there could send the skill anywhere: remove it, or install with "
                                   "--global.",)) from None
        raise


def _existing(directory: int, name: str) -> bytes | None:
    """What the file `name` holds (None: there is none); a link or a non-file is b'' (differs from anything)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return b""
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write(directory: int, name: str, data: bytes) -> None:
    """A new file renamed over `name`: a link at `name` is replaced, never followed."""
    temp = f".{name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise


def planned_files() -> dict[str, bytes]:
    """What an install writes, relative to the skill folder: the bootstrap SKILL.md and the extra files."""
    skill = find(SKILL_NAME)
    files = {rel["path"]: rel["content"].encode() for rel in extra_files(skill)}
    files[SKILL_FILE] = BOOTSTRAP.encode()
    return files


def install(inv: Invocation) -> int:
    global_ = bool(inv.args.get("global_"))
    base = os.path.expanduser("~") if global_ else os.getcwd()
    shown_base = "~" if global_ else "."
    files = planned_files()
    force = bool(inv.args.get("force"))
    root = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the base itself is the user's choice
    opened = [root]
    try:
        folder = root
        shown = shown_base
        for part in (".agents", "skills", SKILL_NAME):
            shown = f"{shown}/{part}"
            folder = _open_dir(folder, part, shown)
            opened.append(folder)
        dirs = {"": folder}
        for rel in sorted(files):
            sub = os.path.dirname(rel)
            if sub and sub not in dirs:
                dirs[sub] = _open_dir(folder, sub, f"{shown}/{sub}")
                opened.append(dirs[sub])
        conflicts = [rel for rel, data in files.items()
                     if _existing(dirs[os.path.dirname(rel)], os.path.basename(rel)) not in (None, data)]
        if conflicts and not force:
            raise QmddError(ErrorCode.INVALID_INPUT, f"{shown} already holds a different {', '.join(conflicts)}",
                            hints=("Run again with --force to replace it.",))
        written = []
        for rel, data in sorted(files.items()):
            directory, name = dirs[os.path.dirname(rel)], os.path.basename(rel)
            if _existing(directory, name) != data:
                _write(directory, name, data)
                written.append(rel)
        install_dir = os.path.join(base, ".agents", "skills", SKILL_NAME)
        link = _claude_link(root, base, force) if inv.args.get("yes") else None
    finally:
        for fd in reversed(opened):
            os.close(fd)
    result = {"path": install_dir, "written": written, "unchanged": sorted(set(files) - set(written)),
              "claude_link": link}
    inv.output.value(result, lambda r: _print_install(inv, r))
    return 0


def _claude_link(root: int, base: str, force: bool) -> str:
    """.claude/skills/qmdd -> ../../.agents/skills/qmdd (Claude Code looks in .claude/skills)."""
    target = os.path.join("..", "..", ".agents", "skills", SKILL_NAME)
    claude = _open_dir(root, ".claude", ".claude")
    try:
        skills = _open_dir(claude, "skills", ".claude/skills")
    finally:
        os.close(claude)
    try:
        try:
            current: str | None = os.readlink(SKILL_NAME, dir_fd=skills)
        except FileNotFoundError:
            current = None
        except OSError:  # there, and not a link
            current = ""
        if current != target:
            if current is not None and not force:
                raise QmddError(ErrorCode.INVALID_INPUT, f".claude/skills/{SKILL_NAME} already exists",
                                hints=("Run again with --force to replace it.",))
            if current is not None:
                _remove(skills, SKILL_NAME)
            os.symlink(target, SKILL_NAME, dir_fd=skills)
    finally:
        os.close(skills)
    return os.path.join(base, ".claude", "skills", SKILL_NAME)


def _remove(directory: int, name: str) -> None:
    """A link or file goes; a real directory is refused (that is someone's own skill, not our link)."""
    if stat.S_ISDIR(os.lstat(name, dir_fd=directory).st_mode):
        raise QmddError(ErrorCode.INVALID_INPUT, f".claude/skills/{name} is a directory",
                        hints=("Move it away yourself; --force replaces only a link or a file.",))
    os.unlink(name, dir_fd=directory)


def _print_install(inv: Invocation, result: dict[str, Any]) -> None:
    state = "Installed the qmdd skill to" if result["written"] else "The qmdd skill is already installed in"
    inv.output.line(f"✓ {state} {result['path']}")
    if result["claude_link"]:
        inv.output.line(f"✓ Linked the Claude skill at {result['claude_link']}")
    else:
        base = os.path.dirname(os.path.dirname(os.path.dirname(result["path"])))
        inv.output.line(f"Tip: --yes also links {os.path.join(base, '.claude', 'skills', SKILL_NAME)} for Claude Code")
