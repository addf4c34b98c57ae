"""The vector index: exact search through an int8 scan, filters, identical vectors, removal, snapshots."""

from __future__ import annotations

import base64
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pyroaring import BitMap

from qmdd.search import vectorindex, vectorstore
from qmdd.search.vectorindex import VectorHit, VectorIndex, VectorSnapshotError, fingerprints
from qmdd.search.vectorstore import SNAPSHOT_FORMAT, OutdatedSnapshotError

DIM = 64
TOL = 2e-3  # float16 storage: similarities are exact to about 1e-3


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def embedding_like(n: int, seed: int, dim: int = DIM, rank: int = 16) -> np.ndarray:
    """Unit vectors with a low intrinsic dimension, like real sentence embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((rank, dim))
    return unit(rng.standard_normal((n, rank)) @ basis + 0.3 * rng.standard_normal((n, dim)))


def build(vectors: np.ndarray, collections: int = 4, start: int = 0, batch: int = 0) -> VectorIndex:
    """An index of these vectors as chunks start.., in one call or `batch` at a time (as the actor adds
    them: each batch may push the int8 scales)."""
    index = VectorIndex(vectors.shape[1])
    ids = list(range(start, start + len(vectors)))
    step = batch or len(ids)
    for at in range(0, len(ids), step):
        part = ids[at:at + step]
        assert index.add(part, [i % collections for i in part], vectors[at:at + step]) == len(part)
    return index


@pytest.fixture(params=["default", "tight"])
def candidates(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default candidate count, or one so small that the int8 order alone must be right."""
    if request.param == "tight":
        monkeypatch.setattr(vectorindex, "CANDIDATE_FLOOR", 8)
        monkeypatch.setattr(vectorindex, "CANDIDATES_PER_HIT", 2)
    return str(request.param)


@pytest.fixture(params=["gather", "scan"])
def filter_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Filtered searches gather the allowed rows, or scan every row and keep the allowed ones."""
    monkeypatch.setattr(vectorindex, "GATHER_BELOW", 1.01 if request.param == "gather" else 0.0)
    return str(request.param)


def ids_of(hits: list[VectorHit]) -> list[int]:
    return [h.chunk_id for h in hits]


def assert_exact_top(hits: list[VectorHit], vectors: np.ndarray, candidates: list[int], query: np.ndarray,
                     limit: int) -> None:
    """`hits` are the true nearest `candidates` (row ids of `vectors`), up to float16 rounding ties."""
    truth = vectors[candidates] @ query
    order = np.argsort(-truth)
    assert len(hits) == min(limit, len(candidates))
    if not hits:
        return
    kth = truth[order[len(hits) - 1]]
    sims = {c: float(s) for c, s in zip(candidates, truth, strict=True)}
    returned = ids_of(hits)
    assert len(set(returned)) == len(returned)
    for hit in hits:
        assert hit.chunk_id in sims
        assert abs(hit.similarity - sims[hit.chunk_id]) < TOL
        assert sims[hit.chunk_id] >= kth - TOL
    for c in candidates:  # anything clearly better than the k-th is returned
        if sims[c] > kth + TOL:
            assert c in returned
    similarities = [h.similarity for h in hits]
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(similarities))


# --- search ---------------------------------------------------------------------------------------------

def test_empty_index() -> None:
    index = VectorIndex(DIM)
    assert len(index) == 0 and index.keys() == BitMap()
    assert index.search(random_vectors(1, 0)[0], 10) == []
    assert index.search(random_vectors(1, 0)[0], 10, BitMap([1, 2])) == []
    assert index.remove([1, 2, 3]) == 0


def test_exact_search(candidates: str) -> None:
    vectors = random_vectors(1000, seed=1)
    index = build(vectors, batch=32)
    assert len(index) == 1000
    everyone = list(range(1000))
    for query in random_vectors(20, seed=2):
        assert_exact_top(index.search(query, 10), vectors, everyone, query, 10)
    # A stored vector finds itself first, at similarity 1.
    top = index.search(vectors[123], 3)
    assert top[0].chunk_id == 123 and top[0].similarity == pytest.approx(1.0, abs=TOL)
    # Limits: zero, and more than there is.
    assert index.search(vectors[0], 0) == []
    assert sorted(ids_of(index.search(vectors[0], 5000))) == everyone
    # A non-unit query gives the same neighbours and cosine similarities.
    scaled = index.search(vectors[7] * 3.0, 5)
    assert ids_of(scaled) == ids_of(index.search(vectors[7], 5))
    assert scaled[0].similarity == pytest.approx(1.0, abs=TOL)


def with_copies(n: int, distinct: int, seed: int) -> np.ndarray:
    """n embedding-like vectors of which `distinct` differ; the others copy one of them, shuffled in."""
    rng = np.random.default_rng(seed)
    rows = embedding_like(distinct, seed)
    return rows[rng.permutation(np.concatenate([np.arange(distinct), rng.integers(0, distinct, n - distinct)]))]


def tie_aware_recall(hits: list[VectorHit], vectors: np.ndarray, candidates: list[int], query: np.ndarray,
                     k: int) -> float:
    """Share of the k wanted hits that are among the best: a hit counts when it is as similar as the
    k-th best candidate, so which of two identical vectors came back does not matter."""
    truth = vectors[candidates] @ query
    wanted = min(k, len(candidates))
    kth = np.sort(truth)[-wanted]
    return sum(float(vectors[h.chunk_id] @ query) >= kth - TOL for h in hits[:wanted]) / wanted


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each scan of every row for a wide filter: True where it found enough allowed rows."""
    seen: list[bool] = []
    scan_for = VectorIndex._scan_for

    def spy(self: VectorIndex, *args: object) -> object:
        rows = scan_for(self, *args)  # type: ignore[arg-type]
        seen.append(rows is not None)
        return rows

    monkeypatch.setattr(VectorIndex, "_scan_for", spy)
    return seen


def test_every_path_is_exact_with_copies_and_filters(scans: list[bool]) -> None:
    # 20k chunks, half of them carrying another chunk's vector (issue 13: a tree indexed twice), in
    # 100 collections. Unfiltered, a 50% filter (a scan of every row), a 5% filter (its rows gathered)
    # and a 1% one (fewer nodes than the candidates: all re-scored) all give the true nearest.
    vectors = with_copies(20_000, 10_000, seed=3)
    index = VectorIndex(DIM)
    assert index.add(range(20_000), [i % 100 for i in range(20_000)], vectors) == 20_000
    assert len(index) == 20_000 and index.statistics()["distinct_vectors"] == 10_000
    filters = {"all": None, "half": index.allowed_keys(list(range(50)), None),
               "5%": index.allowed_keys(list(range(5)), None), "1%": index.allowed_keys([7], None)}
    for name, allowed in filters.items():
        candidates = list(range(20_000)) if allowed is None else allowed.to_array().tolist()
        for query in embedding_like(20, seed=4):
            for k in (10, 100):
                hits = index.search(query, k, allowed)
                assert len(hits) == k and len(set(ids_of(hits))) == k
                assert allowed is None or all(h.chunk_id in allowed for h in hits)
                for hit in hits:
                    assert abs(hit.similarity - float(vectors[hit.chunk_id] @ query)) < TOL
                assert tie_aware_recall(hits, vectors, candidates, query, k) == 1.0, (name, k)
        assert scans == ([True] * 40 if name == "half" else []), name
        scans.clear()


def test_a_wide_filter_far_from_the_query_is_gathered(scans: list[bool]) -> None:
    # A 30% collection on the far side: a scan of every row for 7x the candidates finds none of it,
    # and the search falls back to its rows alone.
    axis = np.zeros(DIM, dtype=np.float32)
    axis[0] = 2.0
    vectors = np.concatenate([unit(embedding_like(2800, seed=5) + axis), unit(embedding_like(1200, seed=6) - axis)])
    index = VectorIndex(DIM)
    index.add(range(4000), [0] * 2800 + [1] * 1200, vectors)
    far = index.allowed_keys([1], None)
    assert far is not None and len(far) == 1200
    for query in unit(embedding_like(5, seed=7) + axis):
        assert_exact_top(index.search(query, 10, far), vectors, list(range(2800, 4000)), query, 10)
    assert scans == [False] * 5


# --- adding and removing -----------------------------------------------------------------------------------

def test_add_is_idempotent() -> None:
    vectors = random_vectors(200, seed=7)
    index = build(vectors[:100])
    assert index.add(range(100), [0] * 100, vectors[:100]) == 0
    assert len(index) == 100
    # Overlap: only the new half counts, and each id sits in one collection once.
    assert index.add(range(50, 150), [i % 4 for i in range(50, 150)], vectors[50:150]) == 50
    assert len(index) == 150 and index.keys() == BitMap(range(150))
    assert sum(len(m) for m in index.collections.values()) == 150
    assert index.collections[1] == BitMap(range(1, 150, 4))
    # Re-adding a known id with another vector changes nothing: the first vector stays.
    assert index.add([5], [0], vectors[199:200]) == 0
    assert index.search(vectors[5], 1)[0].chunk_id == 5
    assert index.search(vectors[199], 1)[0].chunk_id != 5
    assert index.statistics()["vectors"] == 150


def test_add_with_a_repeated_id_in_one_batch() -> None:
    vectors = random_vectors(3, seed=8)
    index = VectorIndex(DIM)
    assert index.add([1, 1, 2], [0, 0, 0], vectors) == 2
    assert len(index) == 2 and index.keys() == BitMap([1, 2])


def test_removed_ids_never_come_back(candidates: str, filter_path: str) -> None:
    vectors = embedding_like(1500, seed=9)
    index = build(vectors)
    queries = embedding_like(15, seed=10)
    # Remove every query's current top 5, plus a third of everything.
    gone = BitMap(range(0, 1500, 3))
    for query in queries:
        gone |= BitMap(ids_of(index.search(query, 5)))
    assert index.remove([*gone.to_array().tolist(), 10**9]) == len(gone)  # unknown ids are ignored
    assert index.remove(gone.to_array().tolist()) == 0
    assert len(index) == 1500 - len(gone) and not (index.keys() & gone)
    assert all(not (members & gone) for members in index.collections.values())
    kept = (BitMap(range(1500)) - gone).to_array().tolist()
    # The rows that moved into the holes kept their vectors, in both copies.
    np.testing.assert_array_equal(index.stored_vectors(kept), vectors[kept].astype(np.float16).astype(np.float32))
    assert index.misquantized(kept) == []
    evens = BitMap(range(0, 1500, 2))
    for query in queries:
        hits = index.search(query, 10)
        assert not (BitMap(ids_of(hits)) & gone)
        assert_exact_top(hits, vectors, kept, query, 10)
        filtered = index.search(query, 10, evens)
        assert not (BitMap(ids_of(filtered)) & gone)
        assert_exact_top(filtered, vectors, [c for c in kept if c % 2 == 0], query, 10)
    # A removed id can be added again.
    victim = int(gone.min())
    assert index.add([victim], [0], vectors[victim:victim + 1]) == 1
    assert index.search(vectors[victim], 1)[0].chunk_id == victim


# --- identical vectors -----------------------------------------------------------------------------------

SHARED, COPIES, DISTINCT = 300, 10, 2000


def shared_vectors_index() -> tuple[VectorIndex, np.ndarray, dict[int, int]]:
    """3,000 chunks sharing 300 vectors (chunks 10g..10g+9 carry vector g) and 2,000 chunks with one of
    their own, in 4 collections (chunk % 4), added in a shuffled order; with each group's owner: the
    chunk added first."""
    vectors = np.concatenate([np.repeat(embedding_like(SHARED, seed=30), COPIES, axis=0),
                              embedding_like(DISTINCT, seed=31)])
    order = np.random.default_rng(32).permutation(len(vectors)).tolist()
    index = VectorIndex(DIM)
    for start in range(0, len(order), 700):  # in batches: twins are found within one and across them
        part = order[start:start + 700]
        assert index.add(part, [i % 4 for i in part], vectors[part]) == len(part)
    owners: dict[int, int] = {}
    for chunk in order:
        if chunk < SHARED * COPIES:
            owners.setdefault(chunk // COPIES, chunk)
    return index, vectors, owners


def group(g: int) -> list[int]:
    return list(range(g * COPIES, (g + 1) * COPIES))


def assert_ordered(hits: list[VectorHit]) -> None:
    """Best first; equal similarities (identical vectors) by chunk id."""
    keys = [(-h.similarity, h.chunk_id) for h in hits]
    assert keys == sorted(keys)


def test_fingerprints_tell_identical_rows() -> None:
    rows = random_vectors(50, seed=38).astype(np.float16)
    again = fingerprints(np.concatenate([rows, rows[::-1]]))
    assert np.array_equal(again[:50], again[50:][::-1]) and len(set(again[:50].tolist())) == 50
    nudged = rows.copy()
    nudged.view(np.uint16)[:, 7] ^= 1  # one bit of one value
    assert not np.any(fingerprints(nudged) == fingerprints(rows))


def test_identical_vectors_are_stored_once_and_all_returned(candidates: str) -> None:
    index, vectors, _ = shared_vectors_index()
    n = len(vectors)
    assert len(index) == n and index.keys() == BitMap(range(n))
    assert index.statistics()["vectors"] == n and index.statistics()["distinct_vectors"] == SHARED + DISTINCT
    # A shared vector finds every chunk that carries it, in chunk order, at similarity 1.
    hits = index.search(vectors[70], 15)
    assert ids_of(hits[:COPIES]) == group(7) and hits[COPIES].chunk_id not in group(7)
    assert all(h.similarity == pytest.approx(1.0, abs=TOL) for h in hits[:COPIES])
    assert len({h.similarity for h in hits[:COPIES]}) == 1
    # A limit inside a group cuts it by chunk id.
    assert ids_of(index.search(vectors[70], 4)) == group(7)[:4]
    # Every chunk reads its vector, twins from their owner's node.
    chunks = [*group(7), 3005, 71]
    np.testing.assert_allclose(index.stored_vectors(chunks), vectors[chunks], atol=TOL)
    with pytest.raises(KeyError):
        index.stored_vectors([70, n])
    everyone = list(range(n))
    for query in embedding_like(20, seed=33):
        for limit in (10, 25):
            hits = index.search(query, limit)
            assert_exact_top(hits, vectors, everyone, query, limit)
            assert_ordered(hits)


def test_removing_shared_vectors() -> None:
    index, vectors, owners = shared_vectors_index()
    distinct = SHARED + DISTINCT
    # A twin: the others stay.
    twin = next(c for c in group(7) if c != owners[7])
    assert index.remove([twin]) == 1
    assert ids_of(index.search(vectors[70], COPIES - 1)) == [c for c in group(7) if c != twin]
    # The owner: its node passes to the smallest twin left.
    assert index.remove([owners[7]]) == 1
    left = [c for c in group(7) if c not in (twin, owners[7])]
    assert ids_of(index.search(vectors[70], len(left))) == left
    assert index.statistics()["distinct_vectors"] == distinct
    # It comes back as a twin.
    assert index.add([owners[7]], [0], vectors[70:71]) == 1
    assert sorted(ids_of(index.search(vectors[70], COPIES - 1))) == sorted([*left, owners[7]])
    assert index.statistics()["distinct_vectors"] == distinct
    # All of a group, in one call: the vector is gone.
    assert index.remove(group(8)) == COPIES
    assert index.statistics()["distinct_vectors"] == distinct - 1
    assert not set(ids_of(index.search(vectors[80], 20))) & set(group(8))
    assert index.search(vectors[80], 1)[0].similarity < 0.999
    # A chunk whose own node was removed returns as a twin, and then inherits the node: its id owns a
    # row again, of another vector.
    loner = SHARED * COPIES  # chunk 3000 has a vector of its own
    assert index.remove([loner]) == 1
    assert index.add([loner], [0], vectors[90:91]) == 1
    assert index.remove([c for c in group(9)]) == COPIES
    assert index.statistics()["distinct_vectors"] == distinct - 2  # 3000's old vector, group 8's
    assert ids_of(index.search(vectors[90], 2))[0] == loner
    assert loner not in ids_of(index.search(vectors[loner], 5))
    everyone = index.keys().to_array().tolist()
    for query in embedding_like(10, seed=34):
        hits = index.search(query, 20)
        assert_exact_top(hits, np.concatenate([vectors[:loner], vectors[90:91], vectors[loner + 1:]]),
                         everyone, query, 20)


def test_filters_with_shared_vectors_across_collections(filter_path: str) -> None:
    index, vectors, _ = shared_vectors_index()
    ones = index.allowed_keys([1], None)
    assert ones is not None
    # Group 7 is chunks 70..79; 73 and 77 are in collection 1.
    hits = index.search(vectors[70], 5, ones)
    assert ids_of(hits[:2]) == [73, 77] and all(h.chunk_id % 4 == 1 for h in hits)
    assert hits[2].similarity < 0.999
    # An allowed bitmap that holds one twin of a group and not its owner.
    only = BitMap([75, 3001, 3002])
    assert ids_of(index.search(vectors[70], 10, only))[0] == 75
    assert sorted(ids_of(index.search(vectors[70], 10, only))) == [75, 3001, 3002]
    members = ones.to_array().tolist()
    for query in embedding_like(15, seed=35):
        hits = index.search(query, 10, ones)
        assert_exact_top(hits, vectors, members, query, 10)
        assert_ordered(hits)


def test_thousands_of_copies_under_filters(filter_path: str) -> None:
    # 4,000 chunks carry one vector (a footer), 1,000 another, in 4 collections; 2,000 have their own.
    footer, header = embedding_like(2, seed=39)
    vectors = np.concatenate([np.repeat(footer[None], 4000, axis=0), np.repeat(header[None], 1000, axis=0),
                              embedding_like(2000, seed=40)])
    order = np.random.default_rng(41).permutation(len(vectors)).tolist()
    index = VectorIndex(DIM)
    for start in range(0, len(order), 500):
        part = order[start:start + 500]
        index.add(part, [i % 4 for i in part], vectors[part])
    assert index.statistics()["distinct_vectors"] == 2002
    ones = index.allowed_keys([1], None)
    assert ones is not None
    members = ones.to_array().tolist()
    # Collection 1's 1,000 footer chunks come first, in chunk order, then its nearest others.
    hits = index.search(footer, 1100, ones)
    assert ids_of(hits[:1000]) == list(range(1, 4000, 4))
    assert_exact_top(hits, vectors, members, footer, 1100)
    assert ids_of(index.search(footer, 3, BitMap([5, 9, 3999, 4500, 6000]))) == [5, 9, 3999]
    for query in embedding_like(5, seed=42):
        assert_exact_top(index.search(query, 20, ones), vectors, members, query, 20)
    # Most copies gone, the node passed on from owner to owner: the last ten remain.
    assert index.remove(range(3990)) == 3990
    assert ids_of(index.search(footer, 10)) == list(range(3990, 4000))
    hits = index.search(footer, 5, ones)
    assert ids_of(hits[:2]) == [3993, 3997] and hits[2].similarity < 0.999


def test_random_churn_keeps_every_chunk_on_its_vector(tmp_path: Path) -> None:
    # Batches of adds (new ids and removed ones back, with another vector) and removals over 300
    # vectors drawn with replacement: owners pass nodes to twins, rows move into holes, snapshots are
    # saved and viewed in between. Every chunk must keep reading its own vector, and searches stay exact.
    rng = np.random.default_rng(50)
    palette = embedding_like(300, seed=51)
    index = VectorIndex(DIM)
    model: dict[int, int] = {}  # chunk -> palette row
    removed: list[int] = []
    next_id = 0
    for step in range(30):
        back = [int(c) for c in rng.choice(removed, min(len(removed), int(rng.integers(0, 40))), replace=False)]
        ids = [*range(next_id, next_id + int(rng.integers(1, 150))), *back]
        next_id += len(ids) - len(back)
        removed = [c for c in removed if c not in set(back)]
        picks = rng.integers(0, len(palette), len(ids))
        assert index.add(ids, [c % 3 for c in ids], palette[picks]) == len(ids)
        model.update(zip(ids, picks.tolist(), strict=True))
        gone = [int(c) for c in rng.choice(list(model), int(rng.integers(0, len(model) // 3 + 1)), replace=False)]
        assert index.remove(gone) == len(gone)
        for c in gone:
            del model[c]
        removed += gone
        if step % 10 == 9:
            index.save(tmp_path / "v.usearch", META)
            index, _ = VectorIndex.load(tmp_path / "v.usearch")
    keys = sorted(model)
    assert index.keys() == BitMap(keys) and index.statistics()["distinct_vectors"] == len(set(model.values()))
    by_chunk = np.zeros((next_id, DIM), dtype=np.float32)
    by_chunk[keys] = palette[[model[c] for c in keys]]
    np.testing.assert_array_equal(index.stored_vectors(keys), by_chunk[keys].astype(np.float16).astype(np.float32))
    assert index.misquantized(keys) == []
    twos = [c for c in keys if c % 3 == 2]
    for query in embedding_like(5, seed=52):
        assert_exact_top(index.search(query, 30), by_chunk, keys, query, 30)
        assert_exact_top(index.search(query, 30, index.allowed_keys([2], None)), by_chunk, twos, query, 30)


def spiked(vector: np.ndarray, dim: int, value: float) -> np.ndarray:
    """This unit vector with component `dim` set to `value`, the others shrunk to keep it unit."""
    out = vector.copy()
    out[dim] = 0
    out *= math.sqrt(1 - value**2) / np.linalg.norm(out)
    out[dim] = value
    return out[None].astype(np.float32)


def test_a_component_beyond_its_scale_saturates_and_is_still_found() -> None:
    vectors = random_vectors(500, seed=43)
    index = build(vectors)
    scales = index._scales.copy()
    axis = np.eye(DIM, dtype=np.float32)
    # Just past the scale: its int8 code saturates, within the tolerance; the scales stay.
    little = spiked(vectors[0], 5, float(scales[5]) + 0.002)
    assert index.add([500], [0], little) == 1
    assert np.array_equal(index._scales, scales)
    assert index._codes[index._row_of[500], 5] == 127
    top = index.search(axis[5], 1)[0]
    assert top.chunk_id == 500 and top.similarity == pytest.approx(float(little[0, 5]), abs=TOL)
    # Far past it: every row is quantized again, with a wider scale.
    far = spiked(vectors[1], 9, min(0.95, 2 * float(scales[9])))
    assert index.add([501], [0], far) == 1
    assert index._scales[9] >= vectorindex.HEADROOM * 0.99 * far[0, 9] > scales[9]
    assert index._codes[index._row_of[501], 9] < 127
    everything = np.concatenate([vectors, little, far])
    assert index.misquantized(range(502)) == []
    for query in [axis[5], axis[9], *random_vectors(10, seed=44)]:
        assert_exact_top(index.search(query, 10), everything, list(range(502)), query, 10)


# --- filters ---------------------------------------------------------------------------------------------

def test_collection_filter() -> None:
    vectors = random_vectors(1200, seed=11)
    index = build(vectors, collections=4)
    assert index.allowed_keys(None, None) is None
    ones = index.allowed_keys([1], None)
    assert ones == BitMap(range(1, 1200, 4))
    assert index.allowed_keys([1, 2], None) == BitMap(range(1, 1200, 4)) | BitMap(range(2, 1200, 4))
    assert index.allowed_keys([99], None) == BitMap()
    bitmap = BitMap(range(0, 100))
    assert index.allowed_keys(None, bitmap) == bitmap
    assert index.allowed_keys([1], bitmap) == BitMap(range(1, 100, 4))
    members = ones.to_array().tolist()
    for query in random_vectors(10, seed=12):
        # Small filters take the exact-subset path: the true nearest members.
        hits = index.search(query, 10, ones)
        assert all(h.chunk_id % 4 == 1 for h in hits)
        assert_exact_top(hits, vectors, members, query, 10)
    assert index.search(vectors[0], 10, index.allowed_keys([99], None)) == []


def test_allowed_bitmap_filter() -> None:
    vectors = random_vectors(800, seed=13)
    index = build(vectors)
    allowed = BitMap(range(100, 160)) | BitMap([5, 10**6, 10**7])  # ids the index lacks are ignored
    members = sorted(set(allowed.to_array().tolist()) & set(range(800)))
    for query in random_vectors(10, seed=14):
        hits = index.search(query, 7, allowed)
        assert set(ids_of(hits)) <= set(members)
        assert_exact_top(hits, vectors, members, query, 7)
    # The query vector itself is outside the filter: it must not be returned.
    assert 0 not in ids_of(index.search(vectors[0], 10, allowed))
    assert index.search(vectors[0], 10, BitMap([10**6])) == []


# --- snapshots ---------------------------------------------------------------------------------------------

META = {"database_id": "db-1", "fingerprint": "all-minilm-l6-v2@abc/int8/mean/256/v1"}


def test_save_load_round_trip(tmp_path: Path) -> None:
    vectors = random_vectors(600, seed=15)
    index = build(vectors, collections=3)
    index.remove(range(0, 600, 10))
    path = tmp_path / "vectors.snapshot"
    index.save(path, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.snapshot", "vectors.snapshot.json"]

    loaded, meta = VectorIndex.load(path)
    assert meta == META
    stats = loaded.statistics()
    assert stats == {"vectors": 540, "distinct_vectors": 540, "dims": DIM, "memory_mapped": True,
                     "memory_bytes": 4 * 600}  # in memory, only the row of each chunk id
    assert loaded.keys() == index.keys() and len(loaded) == 540
    assert {c: BitMap(m) for c, m in loaded.collections.items()} == index.collections
    queries = random_vectors(10, seed=16)
    for query in queries:
        for allowed in (None, loaded.allowed_keys([2], None)):
            before, after = index.search(query, 10, allowed), loaded.search(query, 10, allowed)
            assert ids_of(before) == ids_of(after)
            np.testing.assert_allclose([h.similarity for h in before], [h.similarity for h in after], atol=1e-6)

    # Copy on write: adding a known id changes nothing; a new one copies the view into memory.
    assert loaded.add([1], [1], vectors[1:2]) == 0 and loaded.statistics()["memory_mapped"] is True
    extra = random_vectors(1, seed=17)
    assert loaded.add([5000], [2], extra) == 1
    stats = loaded.statistics()
    assert stats["memory_mapped"] is False and stats["memory_bytes"] > 0 and stats["vectors"] == 541
    assert loaded.search(extra[0], 1)[0].chunk_id == 5000
    assert 5000 in (loaded.allowed_keys([2], None) or BitMap())
    live = index.keys().to_array().tolist()
    for query in queries:  # the old vectors survived the copy
        assert_exact_top(loaded.search(query, 10, BitMap(range(600))), vectors, live, query, 10)

    # Save the changed copy over the snapshot it came from, and load it again.
    loaded.save(path, {**META, "generation": 2})
    again, meta = VectorIndex.load(path)
    assert meta["generation"] == 2 and len(again) == 541 and again.search(extra[0], 1)[0].chunk_id == 5000
    # Removing from a viewed snapshot also copies first.
    assert again.remove([5000, 1]) == 2 and again.statistics()["memory_mapped"] is False
    assert len(again) == 539 and 5000 not in ids_of(again.search(extra[0], 5))


def test_save_load_keeps_shared_vectors(tmp_path: Path) -> None:
    index, vectors, owners = shared_vectors_index()
    index.remove([owners[7], owners[8], *group(9)])  # two nodes renamed, one removed
    path = tmp_path / "v.usearch"
    index.save(path, META)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["format"] == SNAPSHOT_FORMAT and sidecar["count"] == len(index)
    loaded, meta = VectorIndex.load(path)
    assert meta == META and loaded.keys() == index.keys()
    stats = loaded.statistics()
    assert stats == {**index.statistics(), "memory_mapped": True, "memory_bytes": stats["memory_bytes"]}
    assert stats["memory_bytes"] < index.statistics()["memory_bytes"] // 10
    ones = loaded.allowed_keys([1], None)
    for query in [vectors[70], vectors[80], *embedding_like(5, seed=36)]:
        for allowed in (None, ones):
            before, after = index.search(query, 25, allowed), loaded.search(query, 25, allowed)
            assert before == after
    # The loaded copy still knows its twins: a new chunk with a known vector joins it, an owner's
    # removal keeps the vector.
    assert loaded.add([9000], [1], vectors[80:81]) == 1
    assert loaded.statistics()["distinct_vectors"] == index.statistics()["distinct_vectors"]
    left = [c for c in group(8) if c != owners[8]]
    assert loaded.remove([min(left)]) == 1
    assert ids_of(loaded.search(vectors[80], len(left))) == [*left[1:], 9000]
    loaded.save(path, META)
    again, _ = VectorIndex.load(path)
    assert ids_of(again.search(vectors[80], len(left))) == [*left[1:], 9000]


@pytest.fixture
def shared_snapshot(tmp_path: Path) -> Path:
    """300 chunks, 100 of them sharing 10 vectors."""
    vectors = random_vectors(300, seed=37)
    vectors[:100] = np.repeat(vectors[:10], 10, axis=0)
    path = tmp_path / "v.usearch"
    build(vectors).save(path, META)
    return path


def _twin_pairs(sidecar: dict[str, object]) -> np.ndarray:
    raw = base64.b64decode(str(sidecar["twins"]))
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2).copy()


@pytest.mark.parametrize("damage", ["older-format", "twin-is-a-node", "owner-missing", "repeated-twin",
                                    "count", "nodes", "torn-twins", "not-base64"])
def test_inconsistent_twins_are_refused(shared_snapshot: Path, damage: str) -> None:
    sidecar_path = shared_snapshot.with_name(shared_snapshot.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    pairs = _twin_pairs(sidecar)
    assert len(pairs) == 90 and sidecar["nodes"] == 210
    if damage == "older-format":
        del sidecar["format"]
    elif damage == "twin-is-a-node":
        pairs[0, 0] = 299
    elif damage == "owner-missing":
        pairs[0, 1] = 10**6
    elif damage == "repeated-twin":
        pairs[1, 0] = pairs[0, 0]
    elif damage in ("count", "nodes"):
        sidecar[damage] += 1
    elif damage == "torn-twins":
        sidecar["twins"] = base64.b64encode(pairs.tobytes()[:-8]).decode()
    else:
        sidecar["twins"] = "not base64!"
    if damage in ("twin-is-a-node", "owner-missing", "repeated-twin"):
        sidecar["twins"] = base64.b64encode(pairs.tobytes()).decode()
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(shared_snapshot)


def test_save_of_a_viewed_snapshot_over_itself(tmp_path: Path) -> None:
    vectors = random_vectors(300, seed=18)
    path = tmp_path / "v.usearch"
    build(vectors).save(path, META)
    viewed, _ = VectorIndex.load(path)
    viewed.save(path, META)  # still memory-mapped while its file is replaced
    reloaded, meta = VectorIndex.load(path)
    assert meta == META and len(reloaded) == 300
    assert reloaded.search(vectors[42], 1)[0].chunk_id == 42
    assert viewed.search(vectors[42], 1)[0].chunk_id == 42


def test_empty_index_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "v.usearch"
    VectorIndex(DIM).save(path, META)
    loaded, meta = VectorIndex.load(path)
    assert meta == META and len(loaded) == 0 and loaded.search(random_vectors(1, 0)[0], 5) == []
    vector = random_vectors(1, 1)
    assert loaded.add([9], [0], vector) == 1 and loaded.search(vector[0], 5)[0].chunk_id == 9


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "v.usearch"
    build(random_vectors(300, seed=19)).save(path, META)
    return path


@pytest.mark.parametrize("at", [0.0, 0.01, 0.5, 0.999])
def test_corrupted_snapshot_is_refused(snapshot: Path, at: float) -> None:
    _flip(snapshot, at)
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)


def test_truncated_snapshot_is_refused(snapshot: Path) -> None:
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[: len(data) // 2])
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)


def test_missing_or_broken_sidecar_is_refused(snapshot: Path) -> None:
    sidecar = snapshot.with_name(snapshot.name + ".json")
    good = sidecar.read_text()
    sidecar.write_text(good[: len(good) // 2])  # torn JSON
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)
    sidecar.unlink()
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)


@pytest.mark.parametrize(("key", "value"), [("count", 299), ("ndim", 32), ("crc32", 12345)])
def test_sidecar_that_disagrees_is_refused(snapshot: Path, key: str, value: int) -> None:
    sidecar = snapshot.with_name(snapshot.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, key: value}))
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)


def test_sidecar_belongs_to_its_index(tmp_path: Path) -> None:
    # A sidecar beside another index file (same size, other content) fails the checksum.
    a, b = tmp_path / "a.usearch", tmp_path / "b.usearch"
    build(random_vectors(300, seed=20)).save(a, META)
    build(random_vectors(300, seed=21)).save(b, META)
    b.with_name(b.name + ".json").replace(a.with_name(a.name + ".json"))
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(a)


def test_a_graph_snapshot_is_refused_as_outdated(tmp_path: Path) -> None:
    # Format 2 was usearch's own graph file: the daemon rebuilds from SQLite, and doctor calls it stale.
    from usearch.index import Index

    graph = Index(ndim=DIM, metric="cos", dtype="f16")
    graph.add(np.arange(50, dtype=np.uint64), random_vectors(50, seed=24))
    path = tmp_path / "vectors.snapshot"
    graph.save(str(path))
    path.with_name(path.name + ".json").write_text(json.dumps(
        {**META, "format": 2, "ndim": DIM, "count": 50, "nodes": 50, "deleted": 0, "crc32": 0, "collections": {},
         "twins": ""}))
    with pytest.raises(OutdatedSnapshotError):
        VectorIndex.load(path)


@pytest.mark.parametrize("damage", ["longer", "shorter", "huge-count"])
def test_a_file_whose_size_disagrees_is_refused_before_mapping(snapshot: Path, monkeypatch: pytest.MonkeyPatch,
                                                               damage: str) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("mapped")

    if damage == "huge-count":  # the sidecar claims a terabyte of rows
        sidecar = snapshot.with_name(snapshot.name + ".json")
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "nodes": 10**10}))
    else:
        data = snapshot.read_bytes()
        snapshot.write_bytes(data + bytes(64) if damage == "longer" else data[:-64])
    monkeypatch.setattr(vectorstore.mmap, "mmap", never)
    with pytest.raises(VectorSnapshotError, match="size"):
        VectorIndex.load(snapshot)


@pytest.mark.parametrize("damage", ["list", "number", "collections-hex", "collections-bitmap"])
def test_malformed_sidecar_is_a_snapshot_error(snapshot: Path, damage: str) -> None:
    sidecar = snapshot.with_name(snapshot.name + ".json")
    meta = json.loads(sidecar.read_text())
    text = {"list": "[]", "number": "7",
            "collections-hex": json.dumps({**meta, "collections": {"1": "zz"}}),
            "collections-bitmap": json.dumps({**meta, "collections": {"1": "00ff"}})}[damage]
    sidecar.write_text(text)
    with pytest.raises(VectorSnapshotError):
        VectorIndex.load(snapshot)


@pytest.mark.parametrize("removed", [30, 80, 100])
def test_snapshot_after_removals_loads(tmp_path: Path, removed: int) -> None:
    # The graph this index replaced could not restore a file whose entries were mostly deleted; rows
    # leave no trace, and a snapshot of what is left loads and answers exactly.
    vectors = random_vectors(100, seed=22)
    index = build(vectors)
    assert index.remove(range(removed)) == removed
    path = tmp_path / "v.usearch"
    index.save(path, META)
    loaded, _ = VectorIndex.load(path)
    assert len(loaded) == 100 - removed and loaded.statistics()["distinct_vectors"] == 100 - removed
    kept = list(range(removed, 100))
    for query in random_vectors(5, seed=23):
        assert_exact_top(loaded.search(query, 10), vectors, kept, query, 10)
    assert loaded.misquantized(kept) == []
