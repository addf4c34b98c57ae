from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from qmdd.search import bm25index
from qmdd.search.bm25index import BM25Index, ChunkHit, IndexedChunk, SnapshotError
from qmdd.search.bm25store import FORMAT_VERSION, MAGIC
from qmdd.search.ranking import WORDS_CEILING


def chunk(cid: int, doc: int, tf: dict[str, int], length: int | None = None, coll: int = 1) -> IndexedChunk:
    return IndexedChunk(cid, doc, coll, tf, sum(tf.values()) if length is None else length)


def toy() -> BM25Index:
    # N = 3, avgdl = (3 + 2 + 1) / 3 = 2
    index = BM25Index()
    index.add([
        chunk(1, 10, {"cat": 2, "dog": 1}),
        chunk(2, 20, {"dog": 1, "fish": 1}),
        chunk(3, 30, {"bird": 1}),
    ])
    return index


def ranked(hits: Sequence[ChunkHit]) -> list[tuple[int, int]]:
    return [(h.doc_id, h.chunk_id) for h in hits]


def reference(chunks: Sequence[IndexedChunk], terms: Sequence[str], k1: float = 1.2,
              b: float = 0.75) -> dict[int, float]:
    """Textbook BM25 in float64 over documents whose term frequencies and lengths are the sums of
    their chunks'."""
    tfs: dict[int, dict[str, int]] = {}
    lens: dict[int, int] = {}
    for c in chunks:
        doc = tfs.setdefault(c.doc_id, {})
        for t, f in c.tf.items():
            doc[t] = doc.get(t, 0) + f
        lens[c.doc_id] = lens.get(c.doc_id, 0) + c.length
    n = len(tfs)
    avgdl = sum(lens.values()) / n
    scores: dict[int, float] = {}
    for d, tf in tfs.items():
        score = 0.0
        for t in dict.fromkeys(terms):
            df = sum(1 for o in tfs.values() if t in o)
            if t in tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * lens[d] / avgdl))
        if score > 0:
            scores[d] = score
    return scores


@contextmanager
def tiny_delta() -> Iterator[None]:
    # Forces the delta -> main merge path on toy-sized data.
    with mock.patch.object(bm25index, "_MIN_DELTA", 3):
        yield


# -- scoring ---------------------------------------------------------------------------------------


def test_single_term_hand_computed() -> None:
    hits = toy().search(["dog"])
    # df = 2: idf = ln(1 + 1.5 / 2.5) = ln 1.6
    # chunk 2: length 2 = avgdl, K = 1.2          -> ln 1.6 * 2.2 / 2.2  = 0.4700036
    # chunk 1: length 3, K = 1.2 * (0.25 + 1.125)  -> ln 1.6 * 2.2 / 2.65 = 0.3901917
    assert ranked(hits) == [(20, 2), (10, 1)]
    assert hits[0].score == pytest.approx(math.log(1.6), rel=1e-6)
    assert hits[0].score == pytest.approx(0.4700036, rel=1e-6)
    assert hits[1].score == pytest.approx(math.log(1.6) * 2.2 / 2.65, rel=1e-6)
    assert hits[1].score == pytest.approx(0.3901917, rel=1e-6)


def test_two_terms_hand_computed_with_norm() -> None:
    hits = toy().search(["cat", "dog"])
    # cat: df = 1, idf = ln(1 + 2.5 / 1.5) = ln(8/3); chunk 1 has tf 2, K = 1.65
    cat = math.log(8 / 3) * 2 * 2.2 / (2 + 1.65)
    dog1 = math.log(1.6) * 2.2 / 2.65
    assert ranked(hits) == [(10, 1), (20, 2)]
    assert hits[0].score == pytest.approx(cat + dog1, rel=1e-6)
    assert hits[0].score == pytest.approx(1.5725617, rel=1e-6)
    assert hits[1].score == pytest.approx(math.log(1.6), rel=1e-6)
    # One chunk per document: chunk and document level agree; words alone reach WORDS_CEILING at most.
    ceiling = (math.log(8 / 3) + math.log(1.6)) * 2.2 / WORDS_CEILING
    assert hits[0].norm == pytest.approx((cat + dog1) / ceiling, rel=1e-6)
    assert hits[1].norm == pytest.approx(math.log(1.6) / ceiling, rel=1e-6)


def test_or_semantics_unknown_term_still_matches() -> None:
    index = toy()
    hits = index.search(["zebra", "bird"])
    assert ranked(hits) == [(30, 3)]
    # The unknown term counts in the ceiling: the query is only half answered.
    alone = index.search(["bird"])[0]
    assert alone.score == pytest.approx(hits[0].score)
    assert hits[0].norm < alone.norm
    assert index.search(["zebra"]) == []
    assert index.search([]) == []
    assert index.search(["dog"], limit=0) == []


def test_duplicate_terms_count_once_unless_weighted() -> None:
    index = toy()
    once = index.search(["dog"])
    assert [h.score for h in index.search(["dog", "dog"])] == [h.score for h in once]
    doubled = index.search(["dog", "dog"], term_weights=[1.0, 1.0])
    assert [h.score for h in doubled] == pytest.approx([2 * h.score for h in once], rel=1e-6)
    assert [h.norm for h in doubled] == pytest.approx([h.norm for h in once], rel=1e-6)
    halves = index.search(["cat", "dog"], term_weights=[0.0, 0.5])
    assert ranked(halves) == [(20, 2), (10, 1)]
    with pytest.raises(ValueError):
        index.search(["cat"], term_weights=[1.0, 2.0])
    with pytest.raises(ValueError):
        index.search(["cat"], term_weights=[-1.0])


def test_documents_rank_by_summed_chunks_and_show_their_best_chunk() -> None:
    chunks = [
        chunk(1, 7, {"alpha": 1, "pad": 9}),
        chunk(2, 7, {"alpha": 3}),
        chunk(3, 8, {"alpha": 1, "beta": 1}),
        chunk(4, 9, {"beta": 1}),
    ]
    index = BM25Index()
    index.add(chunks)
    hits = index.search(["alpha"], limit=10)
    assert [h.doc_id for h in hits] == [7, 8]
    assert hits[0].chunk_id == 2  # the chunk where alpha is densest, not the first one
    # Document 7: tf 1 + 3 = 4 over length 10 + 3 = 13; N = 3 documents, avgdl = 16 / 3.
    expect = reference(chunks, ["alpha"])
    assert expect[7] == pytest.approx(math.log(1 + 1.5 / 2.5) * 4 * 2.2 / (4 + 1.2 * (0.25 + 0.75 * 13 * 3 / 16)))
    assert {h.doc_id: h.score for h in hits} == pytest.approx(expect, rel=1e-6)
    # A filter that admits only chunk 1 of document 7 still shows that chunk.
    filtered = index.search(["alpha"], limit=10, allowed=BitMap([1, 3]))
    assert [(h.doc_id, h.chunk_id) for h in filtered] == [(7, 1), (8, 3)]
    assert ranked(index.search(["alpha"], limit=1)) == [(7, 2)]


def test_ties_break_by_doc_id_then_chunk_id() -> None:
    index = BM25Index()
    index.add([chunk(cid, doc, {"same": 1, "x": 1}) for cid, doc in [(5, 3), (6, 1), (7, 2), (8, 1)]])
    index.add([chunk(9, 4, {"other": 2})])
    assert ranked(index.search(["same"])) == [(1, 6), (2, 7), (3, 5)]
    assert ranked(index.search(["same"], limit=2)) == [(1, 6), (2, 7)]


def test_top_limit_equals_prefix_of_full_ranking() -> None:
    # Large enough that top-k selection samples a threshold instead of sorting every candidate;
    # few distinct lengths and tfs make many exact ties, and 3 chunks per doc make k grow.
    rng = random.Random(3)
    index = BM25Index()
    index.add([chunk(i, i // 3, {f"t{rng.randrange(6)}": rng.randint(1, 2), "pad": 1},
                     length=rng.choice([2, 3, 4])) for i in range(6000)])
    for query in (["t1"], ["t2", "t4"], ["t0", "t3", "pad"]):
        full = index.search(query, limit=10**6)
        assert len({h.doc_id for h in full}) == len(full)
        keys = [(-h.norm, h.doc_id) for h in full]
        assert keys == sorted(keys)
        for limit in (1, 3, 10, 50, 400):
            assert index.search(query, limit=limit) == full[:limit]


def test_chunks_without_terms_still_count() -> None:
    index = toy()
    before = index.search(["dog"])[0].score
    index.add([chunk(4, 40, {}, length=2)])
    # N grows to 4 with df unchanged: idf(dog) = ln(1 + 2.5 / 2.5) = ln 2; avgdl stays 2.
    assert index.search(["dog"])[0].score == pytest.approx(math.log(2), rel=1e-6)
    assert index.search(["dog"])[0].score > before


def test_norm_bounds_and_saturation() -> None:
    index = BM25Index()
    index.add([chunk(1, 1, {"rare": 5000, "word": 5000}, length=10)])
    index.add([chunk(i, i, {"filler": 1, "word": 1}, length=10) for i in range(2, 50)])
    hits = index.search(["rare", "word"], limit=100)
    assert hits[0].doc_id == 1
    assert hits[0].norm == pytest.approx(WORDS_CEILING, abs=1e-3)
    assert all(0.0 <= h.norm <= WORDS_CEILING for h in hits)
    assert all(h.norm < 0.5 for h in hits[1:])


def test_explain_sums_to_score() -> None:
    hits = toy().search(["cat", "dog", "zebra"], explain=True)
    assert hits[0].explain is not None and set(hits[0].explain) == {"cat", "dog"}
    assert sum(hits[0].explain.values()) == pytest.approx(hits[0].score, rel=1e-6)
    assert hits[1].explain == {"dog": pytest.approx(hits[1].score, rel=1e-6)}
    assert toy().search(["cat"])[0].explain is None


# -- filters and mutation --------------------------------------------------------------------------


def test_allowed_filter_both_directions() -> None:
    index = BM25Index()
    index.add([chunk(i, i // 2, {"common": 1, f"w{i % 3}": 1}, coll=i % 2) for i in range(100)])
    small = BitMap([4, 5, 99, 12345])
    hits = index.search(["common"], limit=100, allowed=small)
    assert sorted(h.chunk_id for h in hits) == [4, 99]  # docs 2 and 49; chunk 5 loses to 4 on tie
    big = BitMap(range(0, 1000, 3))
    hits = index.search(["common"], limit=100, allowed=big)
    assert {h.chunk_id for h in hits} <= set(big)
    assert len(hits) == len({i // 2 for i in range(0, 100, 3)})
    assert index.search(["common"], allowed=BitMap()) == []
    odd = index.collection_chunks(1)
    assert odd == BitMap(range(1, 100, 2))
    assert {h.chunk_id % 2 for h in index.search(["common"], limit=100, allowed=odd)} == {1}


def test_remove_then_search() -> None:
    index = toy()
    assert index.remove([1, 999, -5, 2**40]) == 1
    assert index.remove([1]) == 0
    assert index.chunk_ids() == BitMap([2, 3])
    assert ranked(index.search(["cat", "dog"])) == [(20, 2)]
    # N and avgdl now come from the two survivors: dog has df 1 of N 2, chunk 2 has avgdl-ish length.
    fresh = BM25Index()
    fresh.add([chunk(2, 20, {"dog": 1, "fish": 1}), chunk(3, 30, {"bird": 1})])
    assert index.search(["dog"])[0].score == fresh.search(["dog"])[0].score


def test_add_rejects_live_ids_and_accepts_removed_ones() -> None:
    index = toy()
    with pytest.raises(ValueError):
        index.add([chunk(2, 99, {"new": 1})])
    with pytest.raises(ValueError):
        index.add([chunk(7, 99, {"new": 1}), chunk(7, 99, {"new": 1})])
    with pytest.raises(ValueError):
        index.add([chunk(8, 99, {"new": 0})])
    assert index.chunk_ids() == BitMap([1, 2, 3])
    assert index.search(["new"]) == []
    index.remove([2])
    index.add([chunk(2, 21, {"dog": 1, "fish": 1})])
    assert ranked(index.search(["fish"])) == [(21, 2)]


def test_out_of_order_ids() -> None:
    index = BM25Index()
    index.add([chunk(i, i, {"t": 1, f"u{i % 4}": 1}) for i in (50, 10, 40, 20, 30)])
    index.add([chunk(5, 5, {"t": 2})])
    assert index.remove([40, 5]) == 2
    assert {h.chunk_id for h in index.search(["t"], limit=10)} == {10, 20, 30, 50}
    assert {h.chunk_id for h in index.search(["t"], allowed=BitMap([30, 50, 40]))} == {30, 50}
    assert {h.chunk_id for h in index.search(["t"], allowed=BitMap(range(100)))} == {10, 20, 30, 50}


def test_collections_and_statistics() -> None:
    index = BM25Index()
    index.add([chunk(i, i // 3, {"a": 1, f"b{i}": 1}, coll=i % 3) for i in range(30)])
    assert index.collection_chunks(2) == BitMap(range(2, 30, 3))
    assert index.collection_chunks(42) == BitMap()
    # A removed collection's chunks go by id, as the indexer sends them; its membership goes with them.
    assert index.remove(list(range(2, 30, 3))) == 10
    assert index.collection_chunks(2) == BitMap()
    assert index.remove(list(range(2, 30, 3))) == 0
    assert not {h.chunk_id % 3 for h in index.search(["a"], limit=50)} & {2}
    stats = index.statistics()
    assert stats["chunks"] == 20 and stats["docs"] == 10 and stats["collections"] == 2
    assert stats["postings"] + stats["dead_postings"] >= 40
    assert stats["approx_bytes"] > 0


# -- compaction equals a fresh build (property) ----------------------------------------------------

VOCAB = [f"t{i}" for i in range(12)]

chunk_strategy = st.builds(
    lambda doc, tf, extra: (doc, tf, extra),
    st.integers(0, 15),
    st.dictionaries(st.sampled_from(VOCAB), st.integers(1, 5), min_size=1, max_size=6),
    st.integers(0, 4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(chunk_strategy, min_size=1, max_size=60),
    removed=st.sets(st.integers(0, 59)),
    order=st.randoms(use_true_random=False),
    batch=st.integers(1, 20),
    query=st.lists(st.sampled_from([*VOCAB, "nope"]), min_size=1, max_size=4),
)
def test_compaction_matches_fresh_index(specs: list[tuple[int, dict[str, int], int]], removed: set[int],
                                        order: object, batch: int, query: list[str]) -> None:
    chunks = [chunk(3 * i + 1, doc, tf, sum(tf.values()) + extra) for i, (doc, tf, extra) in enumerate(specs)]
    shuffled = list(chunks)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    index = BM25Index()
    with tiny_delta():
        for start in range(0, len(shuffled), batch):
            index.add(shuffled[start:start + batch])
        dead = [chunks[i].chunk_id for i in removed if i < len(chunks)]
        # Remove in two steps so searches also run with dead-but-uncompacted postings.
        index.remove(dead[: len(dead) // 2])
        index.remove(dead[len(dead) // 2:])
    survivors = [c for c in chunks if c.chunk_id not in set(dead)]
    assert index.chunk_ids() == BitMap(c.chunk_id for c in survivors)
    hits = index.search(query, limit=100)
    if not survivors:
        assert hits == []
        return
    fresh = BM25Index()
    fresh.add(survivors)
    assert [(h.doc_id, h.chunk_id, h.score) for h in hits] == [
        (h.doc_id, h.chunk_id, h.score) for h in fresh.search(query, limit=100)]
    expect = reference(survivors, query)
    assert {h.doc_id: h.score for h in hits} == pytest.approx(expect, rel=1e-5)
    norms = [h.norm for h in hits]  # the ranking score: document- or chunk-level, whichever is higher
    assert norms == sorted(norms, reverse=True)


def test_many_removals_trigger_compaction() -> None:
    index = BM25Index()
    index.add([chunk(i, i, {"w": 1, f"u{i}": 1}) for i in range(1000)])
    index.remove(range(0, 1000, 2))
    stats = index.statistics()
    assert stats["dead_postings"] == 0 and stats["dead_chunks"] == 0
    assert stats["terms"] == 501
    assert len(index.search(["w"], limit=1000)) == 500
    index.add([chunk(2000, 2000, {"u1": 1, "w": 1})])
    assert ranked(index.search(["u1"])) == [(1, 1), (2000, 2000)]


def test_postings_counts_what_a_search_of_the_terms_reads() -> None:
    """A term's chunks, dead ones included until compaction: the work the BM25 actor weighs before it
    chooses where a search runs. Remembered per term, and forgotten when postings change."""
    index = BM25Index()
    index.add([chunk(i, i, {"w": 1, **({"odd": 2} if i % 2 else {})}) for i in range(20)])
    assert index.postings(["w", "odd", "w", "unknown"]) == 30 and index.postings([]) == 0
    index.remove([1])
    assert index.statistics()["dead_chunks"] == 1 and index.postings(["odd"]) == 10  # still read, and skipped
    index.add([chunk(100, 100, {"odd": 1, "new": 1})])
    assert index.postings(["odd", "new"]) == 12
    index.remove(range(0, 20, 2))  # compacted: the dead postings are gone
    assert index.statistics()["dead_postings"] == 0 and index.postings(["w", "odd", "new"]) == 9 + 10 + 1


# -- snapshots -------------------------------------------------------------------------------------


def populated() -> BM25Index:
    index = BM25Index(k1=1.5, b=0.6)
    with tiny_delta():
        index.add([chunk(i, i // 4, {f"w{i % 7}": 1 + i % 3, "all": 1, "ünï": i % 2 + 1}, coll=i % 2)
                   for i in range(0, 400, 2)])
        index.add([chunk(i, 1000 + i, {"late": 2, "all": 1}) for i in range(401, 420, 2)])
    index.remove([0, 2, 4, 405])
    return index


def test_save_load_round_trip(tmp_path: Path) -> None:
    index = populated()
    queries = [["w3"], ["w1", "late"], ["all", "ünï", "w5"], ["nope"]]
    before = [index.search(q, limit=20, explain=True) for q in queries]
    path = tmp_path / "bm25.snap"
    index.save(path, {"tokenizer": "v1", "db": "abc"})
    assert not [p for p in tmp_path.iterdir() if p.name != "bm25.snap"]
    loaded, meta = BM25Index.load(path)
    assert meta == {"tokenizer": "v1", "db": "abc"}
    assert (loaded.k1, loaded.b) == (1.5, 0.6)
    assert [loaded.search(q, limit=20, explain=True) for q in queries] == before
    assert [index.search(q, limit=20, explain=True) for q in queries] == before
    assert loaded.chunk_ids() == index.chunk_ids()
    assert loaded.collection_chunks(1) == index.collection_chunks(1)
    # The loaded index keeps working.
    loaded.remove([6])
    loaded.add([chunk(6, 5, {"fresh": 1})])
    assert ranked(loaded.search(["fresh"])) == [(5, 6)]

    empty = tmp_path / "empty.snap"
    BM25Index().save(empty, {})
    again, meta = BM25Index.load(empty)
    assert meta == {} and again.search(["x"]) == [] and len(again.chunk_ids()) == 0


def _snapshot(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "bm25.snap"
    populated().save(path, {"k": "v"})
    return path, path.read_bytes()


def test_missing_snapshot(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError):
        BM25Index.load(tmp_path / "absent.snap")


@pytest.mark.parametrize("cut", [0, 5, 16, 100, -1, -9, -300])
def test_truncated_snapshot(tmp_path: Path, cut: int) -> None:
    path, data = _snapshot(tmp_path)
    path.write_bytes(data[:cut])
    with pytest.raises(SnapshotError):
        BM25Index.load(path)


@pytest.mark.parametrize("where", [0, 13, 40, 0.5, 0.9, -3])
def test_corrupt_snapshot(tmp_path: Path, where: float) -> None:
    path, data = _snapshot(tmp_path)
    pos = int(len(data) * where) if isinstance(where, float) else where
    damaged = bytearray(data)
    damaged[pos] ^= 0x5A
    path.write_bytes(bytes(damaged))
    with pytest.raises(SnapshotError):
        BM25Index.load(path)


def test_wrong_version_and_garbage(tmp_path: Path) -> None:
    path, data = _snapshot(tmp_path)
    path.write_bytes(MAGIC + struct.pack("<I", FORMAT_VERSION + 1) + data[12:])
    with pytest.raises(SnapshotError, match="version"):
        BM25Index.load(path)
    path.write_bytes(b"\x80\x04pickle?" * 100)
    with pytest.raises(SnapshotError):
        BM25Index.load(path)


def test_save_rejects_non_string_meta(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        toy().save(tmp_path / "x.snap", {"n": 1})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
