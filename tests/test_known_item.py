"""Known-item ranking: tldr's mnemonics, name keys, and scores that mean the same at any length."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest

from qmdd.search.bm25index import BM25Index
from qmdd.search.collapse import collapse, sibling_path
from qmdd.search.fields import document_name_keys, index_chunks, query_name_keys
from qmdd.search.pipeline import collapse_documents
from qmdd.search.ranking import COMMON_IDF, informativeness
from qmdd.search.reads import Reads
from qmdd.search.tokenize import Tokenizer
from qmdd.store.documents import ChunkText, DocMarks, DocRow
from tests.conftest import Env

TOKENIZER = Tokenizer()


@pytest.mark.parametrize(("text", "terms"), [
    ("[c]reate an archive", ["creat", "an", "archiv"]),
    ("e[x]tract files", ["extract", "file"]),
    ("--[v]erbose", ["verbos"]),
    ("[S]ync now", ["sync", "now"]),
    ("arr[i] = 1", ["arr", "i", "1"]),
    ("[x] done", ["x", "done"]),
    ("see [a](b.md)", ["see", "a", "b.md", "b", "md"]),
])
def test_mnemonic_brackets_join_the_word(text: str, terms: list[str]) -> None:
    assert TOKENIZER.index_terms(text) == terms


def test_name_keys_of_title_stem_and_folder() -> None:
    keys = document_name_keys(TOKENIZER, "git rebase", "common/git-rebase.md")
    assert keys == {"\x02git rebase", "\x02git git-rebase rebase", "\x03git rebas", "\x03git git-rebase rebas"}
    # A README is named by its folder, without the folder's numbering.
    readme = document_name_keys(TOKENIZER, "1. Two Sum", "solution/0000-0099/0001.Two Sum/README_EN.md")
    assert {"\x02sum two", "\x03sum two"} <= readme and not any("readm" in k for k in readme)
    assert document_name_keys(TOKENIZER, "", "") == set()


def test_query_name_keys_cover_subsets_and_runs() -> None:
    short = query_name_keys(TOKENIZER, "create a tar archive")
    assert short["\x02tar"] == (1.0, ("tar",))
    assert short["\x02archive create"] == (1.0, ("creat", "archiv"))
    assert short["\x03archiv creat"] == (0.5, ("creat", "archiv"))
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    long = query_name_keys(TOKENIZER, " ".join(words))
    assert "\x02delta echo foxtrot" in long and "\x02bravo delta" not in long
    assert "\x02" + " ".join(words) in long


def test_exact_name_beats_a_name_with_the_same_stem() -> None:
    index = indexed(page(1, 1, "linux/ports.md", "ports", "ports\nManage ports and port collections."),
                    page(2, 2, "osx/port.md", "port", "port\nPackage manager."),
                    *[page(10 + i, 10 + i, f"x/x{i}.md", f"x{i}", "filler text") for i in range(20)])
    assert [doc for doc, _ in search(index, "port")][:2] == [2, 1]
    assert [doc for doc, _ in search(index, "ports")][:2] == [1, 2]


def page(chunk_id: int, doc_id: int, path: str, title: str, text: str) -> ChunkText:
    return ChunkText(chunk_id, doc_id, 1, path, title, (), 1, text)


def indexed(*chunks: ChunkText) -> BM25Index:
    index = BM25Index(k1=1.3, b=0.55)
    index.add(index_chunks(TOKENIZER, chunks))
    return index


def search(index: BM25Index, query: str, limit: int = 10) -> list[tuple[int, float]]:
    terms = TOKENIZER.query_terms(query)
    return [(h.doc_id, h.norm) for h in index.search(terms, limit=limit, names=query_name_keys(TOKENIZER, query),
                                                     stopwords_only=TOKENIZER.only_stopwords(query))]


def test_a_page_named_in_the_query_ranks_first() -> None:
    filler = [page(100 + i, 100 + i, f"common/tool{i}.md", f"tool{i}", f"tool{i}\nUnrelated words {i}.")
              for i in range(30)]
    index = indexed(
        page(1, 1, "common/tar.md", "tar", "tar\nArchiving utility.\n- [c]reate an archive from files:\n"
             "`tar cf target.tar file1`\n- E[x]tract an archive:\n`tar xf source.tar`"),
        page(2, 2, "linux/sqfstar.md", "sqfstar", "sqfstar\nCreate a squashfs filesystem from a tar archive.\n"
             "- Create a filesystem from an uncompressed tar archive:\n`sqfstar fs.sqfs < archive.tar`"),
        *filler)
    ranked = search(index, "create a tar archive")
    assert ranked[0][0] == 1
    exact = search(index, "tar")
    assert exact[0][0] == 1 and exact[0][1] >= 0.9
    assert all(score < 0.9 for _, score in exact[1:])


def test_hits_tell_which_query_terms_their_name_says() -> None:
    # What phrase evidence would otherwise work out from each page's title and path, per hit.
    chunks = [page(1, 1, "common/tar.md", "tar", "tar\nArchiving utility."),
              page(2, 2, "common/git-archive.md", "git archive", "git archive\nCreate an archive of files."),
              page(3, 3, "linux/Create Archive.md", "create archive", "Create an archive, quickly."),
              page(4, 4, "common/zip.md", "zip", "zip\nPackage and compress files.")]
    index = indexed(*chunks)
    for query in ("create a tar archive", "git archive create", "tar", "zip the archive"):
        names = query_name_keys(TOKENIZER, query)
        hits = index.search(TOKENIZER.query_terms(query), limit=10, names=names)
        assert hits, query
        for hit in hits:
            chunk = chunks[hit.doc_id - 1]
            said = {t for key in document_name_keys(TOKENIZER, chunk.title, chunk.path) if key in names
                    for t in names[key][1]}
            assert set(hit.named) == said, (query, hit)
    named = index.search(TOKENIZER.query_terms("git archive create"), limit=2,
                         names=query_name_keys(TOKENIZER, "git archive create"))
    assert [(h.doc_id, h.named) for h in named] == [(2, ("archiv", "git")), (3, ("archiv", "creat"))]
    assert {h.doc_id: h.named for h in index.search(["tar", "archiv"], limit=10)} == {1: (), 2: (), 3: ()}


def test_one_rare_term_in_a_long_document_is_a_strong_hit() -> None:
    # A transcript of many chunks mentions "zyzzyva" once; its score must not shrink with its length.
    filler = "the meeting went on about budgets and plans and schedules " * 20
    chunks = [page(i, 1, "talks/long.md", "long talk", filler) for i in range(1, 200)]
    chunks.append(page(500, 1, "talks/long.md", "long talk", filler + " zyzzyva"))
    chunks += [page(1000 + i, 10 + i, f"notes/n{i}.md", f"note {i}", "short note about plans") for i in range(20)]
    index = indexed(*chunks)
    [(doc, score)] = search(index, "zyzzyva")
    assert doc == 1 and score >= 0.3
    # A one-chunk note with the same passage scores higher (it is all about it), but not by a multiple:
    # scored per document only, the transcript got 0.06.
    index.add(index_chunks(TOKENIZER, [page(2000, 99, "notes/z.md", "long talk", filler + " zyzzyva")]))
    scores = dict(search(index, "zyzzyva"))
    assert scores[99] >= scores[1] >= 0.66 * scores[99]


def test_a_query_of_stopwords_scores_low_unless_a_name_or_a_line_says_it() -> None:
    chunks = [page(i, i, f"common/tool{i}.md", f"tool{i}", f"tool{i}\nThe best of a kind, number {i}.")
              for i in range(1, 21)]
    chunks.append(page(50, 50, "common/which.md", "which", "which\nLocate a program in the user's path."))
    index = indexed(*chunks)
    scored = search(index, "the of a")
    unscaled = index.search(TOKENIZER.query_terms("the of a"), limit=10)
    assert [doc for doc, _ in scored] == [h.doc_id for h in unscaled]  # the same order, at a lower level
    assert unscaled[0].norm > 0.3 and all(score < 0.1 for _, score in scored)
    which = search(index, "which")
    assert which[0] == (50, pytest.approx(which[0][1])) and which[0][1] >= 0.9  # named by the query: in full
    # "the" in one of three documents singles it out; in all three, it singles out none.
    assert informativeness(math.log1p(2.5 / 1.5), 3) == 1.0
    assert informativeness(math.log1p(0.5 / 3.5), 3) < 0.2
    assert informativeness(COMMON_IDF, 7424) == 1.0 and informativeness(COMMON_IDF / 2, 7424) == 0.5
    assert informativeness(0.0, 0) == 1.0


def test_short_page_about_a_term_beats_long_page_mentioning_it() -> None:
    filler = "general remarks on many unrelated subjects and more " * 20
    chunks = [page(i, 1, "long.md", "long", filler + (" rsync" if i == 5 else "")) for i in range(1, 40)]
    chunks.append(page(100, 2, "rsync-notes.md", "notes", "rsync copies files. rsync over ssh. rsync flags."))
    chunks += [page(200 + i, 10 + i, f"x{i}.md", f"x{i}", "other text entirely") for i in range(20)]
    ranked = search(indexed(*chunks), "rsync")
    assert [doc for doc, _ in ranked[:2]] == [2, 1]


def doc(doc_id: int, path: str, content_hash: str, collection_id: int = 1) -> DocRow:
    return DocRow(doc_id, collection_id, f"c{collection_id}", "/root", path, 1, 0, content_hash, "t", 1)


class RowsRead(Reads):
    """Reads from a dict, counting the rows asked for."""

    def __init__(self, rows: dict[int, DocRow]) -> None:
        super().__init__(sqlite3.connect(":memory:"))
        self.rows, self.asked = rows, 0

    def marks(self, ids: Iterable[int]) -> dict[int, DocMarks]:
        wanted = list(ids)
        self.asked = max(self.asked, len(wanted))
        return {i: DocMarks(i, row.collection_id, row.collection, row.path, row.hash)
                for i in wanted if (row := self.rows.get(i)) is not None}


def test_collapsing_the_head_of_a_long_list_reads_only_what_it_needs() -> None:
    langs = ["de", "fr", "es", "it", "pt", "ru", "ja", "ko", "zh", "nl", "pl", "sv", "tr", "uk", "cs", "da"]
    rows = {i: doc(i, f"pages.{lang}/common/tar.md", f"t{i}") for i, lang in enumerate(langs, 1)}  # 16 copies
    rows |= {100 + i: doc(100 + i, f"pages/common/tool{i}.md", f"h{i}") for i in range(200)}
    ranked = [*range(1, 17), *range(100, 300)]
    reads = RowsRead(rows)
    kept, copies = collapse_documents(reads, ranked, True, wanted=5)
    assert kept[:5] == [1, 100, 101, 102, 103] and copies[1] == [rows[i].uri for i in range(2, 17)]
    assert reads.asked == 30  # 5 + FIRST_EXTRA, doubled once: the copies filled the first window
    everything = RowsRead(rows)
    assert collapse_documents(everything, ranked, True) == (kept + list(range(100 + len(kept) - 1, 300)), copies)
    assert everything.asked == len(ranked)


def test_sibling_path_drops_variant_tags() -> None:
    assert sibling_path("pages.de/common/tar.md") == "pages/common/tar.md"
    assert sibling_path("pages.pt_BR/linux/ls.md") == "pages/linux/ls.md"
    assert sibling_path("docs.zh-Hant/a.md") == "docs/a.md"
    assert sibling_path("pages/common/tar.md") == "pages/common/tar.md"
    assert sibling_path("v1.2/notes.md") == "v1.2/notes.md"  # a version, not a language
    assert sibling_path("tar.de.md") == "tar.de.md"


def test_collapse_groups_copies_under_the_best_ranked() -> None:
    rows = {
        1: doc(1, "pages.de/common/tar.md", "h1"),
        2: doc(2, "pages/common/tar.md", "h2"),
        3: doc(3, "pages/common/zip.md", "h3"),
        4: doc(4, "pages.fr/common/tar.md", "h4"),
        5: doc(5, "elsewhere/copy-of-zip.md", "h3"),  # identical content
        6: doc(6, "pages/common/tar.md", "h6", collection_id=2),  # another collection: not a sibling
    }
    kept, others = collapse([1, 3, 2, 5, 4, 6, 99], rows.get)
    assert kept == [1, 3, 6, 99]
    assert others == {1: [2, 4], 3: [5]}


def test_end_to_end_copies_collapse_and_names_rank_first(env: Env, tmp_path: Path) -> None:
    tree = tmp_path / "tldr"
    pages = {
        "pages/common/tar.md": "# tar\n\n> Archiving utility.\n\n- [c]reate an archive from files:\n\n"
                               "`tar cf t.tar f`\n",
        "pages.de/common/tar.md": "# tar\n\n> Archivierungswerkzeug.\n\n- Erstelle ein Archiv:\n\n`tar cf t.tar f`\n",
        "pages.fr/common/tar.md": "# tar\n\n> Utilitaire d'archivage.\n\n- Crée une archive:\n\n`tar cf t.tar f`\n",
        "pages/linux/sqfstar.md": "# sqfstar\n\n> Create a squashfs filesystem from a tar archive.\n\n"
                                  "- Create a filesystem from an uncompressed tar archive:\n\n`sqfstar fs < a.tar`\n",
        "pages/common/zip.md": "# zip\n\n> Package and compress files into a zip archive.\n",
        "copy/zip.md": "# zip\n\n> Package and compress files into a zip archive.\n",
        "talks/long.md": "# All hands\n\n" + "".join(f"Part {i}. The meeting went on about budgets, plans and "
                                                    f"schedules for the quarter.\n\n" for i in range(4000))
                         + "Someone mentioned the zyzzyva once.\n\n" + "More budget talk follows here.\n\n" * 500,
    }
    for path, text in pages.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text, encoding="utf-8")
    env.json("collection", "add", str(tree), "--name", "t")

    hits = env.json("search", "create a tar archive", "-n", "3")
    assert hits[0]["file"] == "qmd://t/pages/common/tar.md"
    assert sorted(hits[0]["copies"]) == ["qmd://t/pages.de/common/tar.md", "qmd://t/pages.fr/common/tar.md"]
    assert not any(h["file"].endswith("/tar.md") for h in hits[1:])  # the translations are not hits of their own
    every = env.json("search", "tar", "-n", "10", "--no-collapse")
    assert {h["file"] for h in every} >= {f"qmd://t/{p}" for p in pages if p.endswith("/tar.md")}
    assert all("copies" not in h for h in every)
    zips = env.json("search", "zip", "-n", "5")
    assert len([h for h in zips if h["file"].endswith("zip.md")]) == 1  # identical content: one hit

    # One mention of a rare word in a large transcript survives qmd users' habitual --min-score 0.3.
    rare = env.json("search", "zyzzyva", "--min-score", "0.3")
    assert [h["file"] for h in rare] == ["qmd://t/talks/long.md"]


def test_end_to_end_a_query_of_stopwords_is_dropped_by_min_score(env: Env, tmp_path: Path) -> None:
    tree = tmp_path / "pages"
    tree.mkdir()
    for i in range(12):
        (tree / f"tool{i}.md").write_text(f"# tool{i}\n\n> The best of a kind.\n\n- Show the state of a job {i}:\n")
    (tree / "which.md").write_text("# which\n\n> Locate a program in the user's path.\n")
    env.json("collection", "add", str(tree), "--name", "p")
    hits = env.json("search", "the of a", "-n", "5")
    assert len(hits) == 5 and all(h["score"] < 0.3 for h in hits)
    assert env.json("search", "the of a", "--min-score", "0.3") == []
    assert env.json("search", "which", "-n", "1")[0]["file"] == "qmd://p/which.md"
    assert env.json("search", "which", "--min-score", "0.3")[0]["score"] >= 0.9
