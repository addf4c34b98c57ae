"""A target that names a collection is answered from that collection or not at all: the path-suffix
fallback never serves another collection's document, and a qmd:// URI is exact."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from qmdctl.client import Client
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.targets import resolve_target
from qmdd.store.documents import CollectionRow
from tests.conftest import Env

DEADLINE_S = 60


def exit_code(code: ErrorCode) -> int:
    return code.spec.exit_code


@pytest.fixture
def two_collections(env: Env, tmp_path: Path) -> Iterator[Client]:
    """tldr has no transcript.md at its top; scratch has one; both have sub/shared.md."""
    tldr, scratch = tmp_path / "tldr", tmp_path / "scratch"
    for root in (tldr, scratch):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "shared.md").write_text(f"# Shared in {root.name}\n")
    (tldr / "ls.md").write_text("# ls\n\nList files.\n")
    (tldr / "sub" / "nested.md").write_text("# Nested\n\nOnly in tldr.\n")
    (scratch / "transcript.md").write_text("# Transcript\n\nPrivate scratch notes.\n")
    env.run("collection", "add", str(tldr), "--name", "tldr")
    env.run("collection", "add", str(scratch), "--name", "scratch")
    with env.client() as client:
        client.connect()
        yield client


def get_error(client: Client, target: str) -> QmddError:
    with pytest.raises(QmddError) as caught:
        client.call("get", {"target": target})
    return caught.value


def test_cli_get_of_a_uri_never_answers_from_another_collection(env: Env, two_collections: Client) -> None:
    proc = env.run("get", "qmd://tldr/transcript.md", "--json", check=False)
    assert proc.returncode == exit_code(ErrorCode.NOT_FOUND), proc.stdout
    problem = json.loads(proc.stderr)
    assert problem["code"] == "NOT_FOUND" and "scratch" not in proc.stdout
    # The same name without the URI scheme names the collection too.
    assert get_error(two_collections, "tldr/transcript.md").code is ErrorCode.NOT_FOUND
    # A bare file name is still found wherever it is, as qmd does.
    assert two_collections.call("get", {"target": "transcript.md"})["file"] == "qmd://scratch/transcript.md"


def test_a_uri_is_exact_and_never_ambiguous(two_collections: Client) -> None:
    err = get_error(two_collections, "qmd://tldr/shared.md")
    assert err.code is ErrorCode.NOT_FOUND and "ambiguous" not in err.message
    # Without the scheme, a suffix inside the named collection still finds its one match.
    assert two_collections.call("get", {"target": "tldr/nested.md"})["file"] == "qmd://tldr/sub/nested.md"
    assert two_collections.call("get", {"target": "tldr/shared.md"})["file"] == "qmd://tldr/sub/shared.md"
    # A bare name that two collections hold is ambiguous, and says which documents it could be.
    err = get_error(two_collections, "shared.md")
    assert "ambiguous" in err.message and err.details is not None
    assert sorted(err.details["candidates"]) == ["qmd://scratch/sub/shared.md", "qmd://tldr/sub/shared.md"]


def test_extra_slashes_after_the_scheme_are_normalised(two_collections: Client) -> None:
    for target in ("qmd:///tldr/ls.md", "qmd:////tldr/ls.md", "qmd://tldr//ls.md"):
        assert two_collections.call("get", {"target": target})["file"] == "qmd://tldr/ls.md", target


def test_resolve_target_normalises_the_uri_and_marks_it_exact() -> None:
    notes = CollectionRow(1, "notes", "/srv/notes", ("**/*.md",), (), 0.0, None)
    for text in ("qmd://notes/a/b.md", "qmd:///notes/a/b.md", "qmd:////notes//a/./b.md", "//notes/a/b.md"):
        target = resolve_target(text, [notes], None)
        assert (target.collection, target.path, target.exact) == (notes, "a/b.md", True), text
    assert resolve_target("notes/a/b.md", [notes], None).exact is False


def test_mcp_get_and_resources_read_stay_in_the_named_collection(env: Env, two_collections: Client) -> None:
    async def scenario() -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", "qmdctl.main", "mcp"], env=env.vars)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            wrong = await client.call_tool("get", {"file": "qmd://tldr/transcript.md"})
            assert wrong.is_error and "NOT_FOUND" in wrong.content[0].text
            assert "Private scratch" not in wrong.content[0].text
            with pytest.raises(MCPError) as caught:
                await client.read_resource("qmd://tldr/transcript.md")
            assert "NOT_FOUND" in str(caught.value) and "Private scratch" not in str(caught.value)
            right = await client.read_resource("qmd://scratch/transcript.md")
            assert right.contents[0].text.startswith("# Transcript")

    async def with_deadline() -> None:
        with anyio.fail_after(DEADLINE_S):
            await scenario()

    anyio.run(with_deadline, backend="trio")
