"""Nothing raw to a terminal: file names, titles, snippets, bodies, context text and error messages that
carry escape sequences (OSC 52 clipboard writes, OSC 0 window titles, OSC 8 links, CSI 2J) or bidi
overrides reach the terminal as visible escapes, through the real CLI and a real daemon. JSON stays exact."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmdctl.render import json_text, terminal_safe
from tests.conftest import Env

CLIPBOARD = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
TITLE = "\x1b]0;pwn\x07"
CLEAR = "\x1b[2J"
LINK = "\x1b]8;;http://x\x07here\x1b]8;;\x07"
RTL = "\u202e"
CSI_C1 = "\u009b"
EVIL_NAME = f"evil{TITLE}{RTL}{CSI_C1}.md"
EVIL_URI = f"qmd://notes/{EVIL_NAME}"

# What a terminal acts on instead of printing (newline and tab are text).
_ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_inert(text: str, what: str) -> None:
    found = sorted(set(_ACTIVE.findall(text)))
    assert not found, f"{what} sends {found!r} to the terminal:\n{text!r}"


@pytest.fixture
def hostile(env: Env, tmp_path: Path) -> Env:
    """A collection whose file name, title, body, context and a skipped file carry escape sequences."""
    root = tmp_path / "notes"
    root.mkdir()
    (root / EVIL_NAME).write_text(f"# Title {CLIPBOARD} {CLEAR}\n\nwombat {LINK} {RTL}reversed {CSI_C1}6n end\n")
    (root / f"skipped{CLEAR}.md").write_bytes(b"# binary \x00\xff\xfe wombat\n")  # NUL: skipped as binary
    env.run("collection", "add", str(root), "--name", "notes")
    env.run("context", "add", "qmd://notes/", f"context {TITLE} {RTL}")
    return env


def test_text_output_and_errors_show_escapes_instead_of_sending_them(hostile: Env) -> None:
    commands = [("search", "wombat"), ("search", "wombat", "--full"), ("query", "wombat"),
                ("vsearch", "wombat"), ("ls",), ("ls", "notes"), ("status",), ("update",),
                ("collection", "list"), ("context", "list"), ("get", EVIL_URI), ("multi-get", "notes/*.md"),
                ("search", "wombat", "--md"), ("get", EVIL_URI, "--md"), ("search", f"wombat{TITLE}", "--dry-run"),
                ("search", "wombat", "--line-numbers")]
    for args in commands:
        proc = hostile.run(*args, check=False)
        assert_inert(proc.stdout, f"qmdctl {' '.join(args)!r} (stdout)")
        assert_inert(proc.stderr, f"qmdctl {' '.join(args)!r} (stderr)")
    shown = hostile.run("search", "wombat").stdout
    # Escaped visibly, not dropped: a reader sees what the file carries.
    assert "evil\\x1b]0;pwn\\x07\\u202e\\x9b.md" in shown and "\\x1b]52;c;" in shown and "\\x1b[2J" in shown
    assert "context \\x1b]0;pwn\\x07 \\u202e" in shown
    assert "wombat \\x1b]8;;http://x\\x07here" in hostile.run("get", EVIL_URI).stdout
    # Numbered snippet lines carry the file's own line numbers.
    assert "\n3: wombat \\x1b]8;;http://x\\x07here" in hostile.run("search", "wombat", "--line-numbers").stdout

    # Error messages echo what they could not find or parse.
    for args in [("get", f"qmd://notes/missing{TITLE}.md"), ("search", f"--bogus{CLIPBOARD}"),
                 ("collection", "remove", f"gone{CLEAR}{RTL}"), ("context", "rm", f"qmd://nowhere{TITLE}/"),
                 ("ls", f"nowhere{LINK}")]:
        proc = hostile.run(*args, check=False)
        assert proc.returncode != 0 and proc.stderr
        assert_inert(proc.stderr, f"qmdctl {' '.join(args)!r} (stderr)")
        assert_inert(proc.stdout, f"qmdctl {' '.join(args)!r} (stdout)")


def test_a_line_break_in_a_name_cannot_fake_a_line_of_output(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "two\nqmd:__notes_fake.md").write_text("# Wombat\n\nwombat burrows\n")
    env.run("collection", "add", str(root), "--name", "notes")
    env.run("context", "add", "qmd://notes/", "line one\nScore: 100%")
    for args in [("search", "wombat"), ("search", "wombat", "--md"), ("ls", "notes"), ("ls", "notes", "--md"),
                 ("multi-get", "notes/*.md"), ("multi-get", "notes/*.md", "--md"), ("status",)]:
        shown = env.run(*args).stdout
        lines = shown.splitlines()
        assert not any(line.startswith(("qmd:__notes_fake", "Score: 100%")) for line in lines), (args, shown)
        assert "two\\nqmd:__notes_fake.md" in shown or args == ("status",), (args, shown)
    assert "Context: line one\\nScore: 100%" in env.run("search", "wombat").stdout
    # Contexts of several levels come as one text, blank-line separated: one a line, indented, not "\n\n".
    env.run("context", "add", "/", "All my notes")
    shown = env.run("search", "wombat").stdout
    assert "Context: All my notes\n         line one\\nScore: 100%\n" in shown, shown
    assert env.json("search", "wombat")[0]["file"] == "qmd://notes/two\nqmd:__notes_fake.md"  # JSON: exact


def test_program_formats_are_exact_when_redirected(hostile: Env) -> None:
    raw = hostile.run("search", "wombat", "--json").stdout
    assert_inert(raw, "search --json")  # the same values, with \\u escapes for what JSON leaves raw
    hit = json.loads(raw)[0]
    assert hit["file"] == EVIL_URI and hit["title"] == f"Title {CLIPBOARD} {CLEAR}"
    assert hit["context"] == f"context {TITLE} {RTL}"
    records = hostile.run("get", EVIL_URI, "--ndjson").stdout
    assert_inert(records, "get --ndjson")
    body = [json.loads(line) for line in records.splitlines()][-1]["payload"]["body"]
    assert f"wombat {LINK} {RTL}reversed {CSI_C1}6n end" in body
    # csv and files are for programs when redirected: the exact name, which `qmdctl get` takes back.
    assert EVIL_URI in hostile.run("search", "wombat", "--files").stdout
    assert EVIL_URI in hostile.run("ls", "notes", "--csv").stdout


def run_on_terminal(env: Env, *args: str, colour: bool = False, stdout: Path | None = None) -> str:
    """The real CLI with stderr, and stdout unless it goes to the file `stdout`, on a pseudo-terminal;
    returns what the terminal received."""
    variables = dict(env.vars)
    if colour:
        variables.pop("NO_COLOR")
    controller, terminal = pty.openpty()
    with open(stdout or os.devnull, "w") as redirected:
        proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", *args], env=variables,
                                stdin=subprocess.DEVNULL, stdout=redirected if stdout else terminal, stderr=terminal)
    os.close(terminal)
    received = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], deadline - time.monotonic())[0]:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(controller)
        assert proc.wait(timeout=10) == 0
    return received.decode("utf-8").replace("\r\n", "\n")  # the terminal's own newline translation


def test_on_a_terminal_only_colours_are_sent(hostile: Env, tmp_path: Path) -> None:
    for args in [("search", "wombat", "--files"), ("search", "wombat", "--csv"), ("ls", "notes", "--csv"),
                 ("context", "list", "--csv")]:
        assert_inert(run_on_terminal(hostile, *args), f"qmdctl {' '.join(args)!r} on a terminal")
    assert "evil\\x1b]0;pwn\\x07" in run_on_terminal(hostile, "search", "wombat", "--files")

    shown = run_on_terminal(hostile, "search", "wombat", colour=True)
    sequences = set(re.findall("\x1b[^m]*m?", shown))
    assert sequences and sequences <= {"\x1b[36m", "\x1b[2m", "\x1b[1m", "\x1b[0m", "\x1b[33m", "\x1b[32m"}
    assert_inert(re.sub("\x1b\\[[0-9]+m", "", shown), "search on a colour terminal")
    assert "\x1b[36mqmd://notes/evil\\x1b]0;pwn\\x07" in shown

    # The progress bar is drawn on stderr, the terminal; redirected stdout gets only the summary.
    summary = tmp_path / "update.txt"
    run_on_terminal(hostile, "update", stdout=summary)
    assert summary.read_text().startswith("notes: 2 files")


def test_terminal_safe_and_json_text() -> None:
    hostile = f"a{TITLE}b\tc\nd{CSI_C1}\x7f{RTL}\u2066\r\udcff"
    assert terminal_safe(hostile) == "a\\x1b]0;pwn\\x07b\tc\nd\\x9b\\x7f\\u202e\\u2066\\x0d\\udcff"
    encoded = json_text({"k": hostile})
    assert json.loads(encoded) == {"k": hostile}
    assert_inert(encoded, "json_text")
