"""`qmdctl skill show|install` and `qmdctl skills list|get|path`: the skill shipped with qmdctl, and an install
that refuses to overwrite what differs without --force and never writes through a planted symlink."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmdctl.commands.skill import BOOTSTRAP, frontmatter
from qmdctl.spec import COMMANDS

SKILL = Path(__file__).parent.parent / "qmdctl" / "skills" / "qmdd"


def qmdctl(*args: str, cwd: Path | None = None, home: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("QMDD_", "AGENT_"))}
    variables.update(NO_COLOR="1", QMDD_HOME="/nonexistent/qmdd-skill-tests", **(env or {}))
    if home is not None:
        variables["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "qmdctl.main", *args], cwd=cwd, env=variables, capture_output=True,
                          text=True, timeout=30)


def as_json(*args: str, **kw: Any) -> Any:
    proc = qmdctl(*args, "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_skill_names_only_real_commands() -> None:
    text = (SKILL / "SKILL.md").read_text(encoding="utf-8")
    fields = frontmatter(text)
    assert fields is not None and fields["name"] == "qmdd" and "qmdctl" in fields["description"]
    known = {c.path[0] for c in COMMANDS}
    # Commands as written in code: `qmdctl X`, a line of a shell block starting with it, "$(qmdctl X".
    written = re.compile(r"(?:^|`|\$\()qmdctl ([a-z][a-z-]*)", re.MULTILINE)
    for path in (SKILL / "SKILL.md", SKILL / "references" / "mcp-setup.md"):
        commands = set(written.findall(path.read_text(encoding="utf-8")))
        assert commands and commands <= known, f"{path.name}: no such commands: {commands - known}"


def test_list_get_path_show() -> None:
    assert as_json("skills", "list") == [{"name": "qmdd", "description": frontmatter(
        (SKILL / "SKILL.md").read_text())["description"]}]  # type: ignore[index]
    assert qmdctl("skills", "list").stdout.startswith("  qmdd  Search local markdown")
    content = (SKILL / "SKILL.md").read_text(encoding="utf-8")
    assert as_json("skills", "get", "qmdd") == [{"name": "qmdd", "content": content}]
    full = as_json("skills", "get", "qmdd", "--full")[0]
    assert [f["path"] for f in full["files"]] == ["references/mcp-setup.md"]
    assert as_json("skills", "get", "--all")[0]["name"] == "qmdd"
    text = qmdctl("skills", "get", "qmdd", "--full").stdout
    assert text.startswith(content) and "\n--- references/mcp-setup.md ---\n" in text
    assert as_json("skills", "path") == {"paths": [str(SKILL.parent)]}
    assert qmdctl("skills", "path", "qmdd").stdout == f"{SKILL}\n"
    assert qmdctl("skill", "show").stdout == content
    assert qmdctl("--skill").stdout == content  # qmd's alias
    assert as_json("skill", "show")["content"] == content


def test_unknown_and_missing_names() -> None:
    missing = qmdctl("skills", "get", "nope", "--json")
    problem = json.loads(missing.stderr)  # problem details go to stderr
    assert missing.returncode == 12 and problem["code"] == "NOT_FOUND" and problem["details"]["candidates"] == ["qmdd"]
    assert qmdctl("skills", "get").returncode == 10  # INVALID_INPUT: no name, no --all


def test_skills_dir_override(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "SKILL.md").write_text("---\nname: mine\ndescription: first\n  and more\n---\nbody\n")
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "SKILL.md").write_text("---\nname: hidden\nhidden: true\n---\n")
    (tmp_path / "nameless").mkdir()
    (tmp_path / "nameless" / "SKILL.md").write_text("no front matter\n")
    env = {"QMDD_SKILLS_DIR": str(tmp_path)}
    assert as_json("skills", "list", env=env) == [{"name": "mine", "description": "first and more"}]
    assert as_json("skills", "get", "hidden", env=env)[0]["name"] == "hidden"  # hidden from the list only


def test_install_then_idempotent_then_force(tmp_path: Path) -> None:
    result = as_json("skill", "install", cwd=tmp_path)
    folder = tmp_path / ".agents" / "skills" / "qmdd"
    assert result == {"path": str(folder), "written": ["SKILL.md", "references/mcp-setup.md"], "unchanged": [],
                      "claude_link": None}
    assert (folder / "SKILL.md").read_text() == BOOTSTRAP and "!`qmdctl skill show`" in BOOTSTRAP
    assert (folder / "references" / "mcp-setup.md").read_text() == (SKILL / "references" / "mcp-setup.md").read_text()
    assert as_json("skill", "install", cwd=tmp_path)["unchanged"] == ["SKILL.md", "references/mcp-setup.md"]

    (folder / "SKILL.md").write_text("my own edits\n")
    refused = qmdctl("skill", "install", "--json", cwd=tmp_path)
    assert refused.returncode == 10 and "--force" in json.loads(refused.stderr)["recovery_hints"][0]
    assert (folder / "SKILL.md").read_text() == "my own edits\n"
    assert as_json("skill", "install", "--force", cwd=tmp_path)["written"] == ["SKILL.md"]
    assert (folder / "SKILL.md").read_text() == BOOTSTRAP
    assert "is already installed in" in qmdctl("skill", "install", "-f", cwd=tmp_path).stdout


def test_global_and_claude_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = as_json("skill", "install", "--global", "--yes", cwd=tmp_path, home=home)
    assert result["path"] == str(home / ".agents" / "skills" / "qmdd")
    link = home / ".claude" / "skills" / "qmdd"
    assert result["claude_link"] == str(link) and link.is_symlink()
    assert os.readlink(link) == "../../.agents/skills/qmdd" and (link / "SKILL.md").read_text() == BOOTSTRAP
    assert not (tmp_path / ".agents").exists()
    as_json("skill", "install", "--global", "--yes", cwd=tmp_path, home=home)  # the same link: fine
    link.unlink()
    link.mkdir()  # someone's own skill folder there: never removed, even with --force
    assert qmdctl("skill", "install", "--global", "--yes", cwd=tmp_path, home=home).returncode == 10
    assert qmdctl("skill", "install", "--global", "--yes", "--force", cwd=tmp_path, home=home).returncode == 10
    assert link.is_dir() and not link.is_symlink()


@pytest.mark.parametrize("planted", [".agents", ".agents/skills", ".agents/skills/qmdd",
                                     ".agents/skills/qmdd/references"])
def test_a_planted_directory_link_is_refused(tmp_path: Path, planted: str) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    target = work / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere)
    for force in ((), ("--force",)):
        proc = qmdctl("skill", "install", *force, "--json", cwd=work)
        assert proc.returncode == 17 and json.loads(proc.stderr)["code"] == "PERMISSION_DENIED"
    assert list(elsewhere.iterdir()) == []


def test_a_planted_file_link_is_replaced_never_followed(tmp_path: Path) -> None:
    folder = tmp_path / ".agents" / "skills" / "qmdd"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / "SKILL.md").symlink_to(victim)
    assert qmdctl("skill", "install", cwd=tmp_path).returncode == 10  # differs: refused without --force
    as_json("skill", "install", "--force", cwd=tmp_path)
    assert victim.read_text() == "precious\n"
    assert not (folder / "SKILL.md").is_symlink() and (folder / "SKILL.md").read_text() == BOOTSTRAP
