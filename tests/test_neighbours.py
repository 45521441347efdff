"""Exact top-k: equal to scikit-learn's brute force, deterministic on ties, exact when updated."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core import neighbours
from core.encoder import l2_normalise
from core.neighbours import NO_NEIGHBOUR, add_to_lists, search, top_k


def _random(n: int, d: int, seed: int = 0) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, d)))


@pytest.mark.parametrize(
    ("n", "d", "k", "block"),
    # (2600, 32, 10, 2048): several of faiss's tiles of candidates (1,024) in one call.
    [
        (500, 32, 10, 64),
        (1200, 128, 10, 500),
        (300, 16, 5, 1000),
        (97, 8, 10, 7),
        (2600, 32, 10, 2048),
    ],
)
def test_equals_sklearn_brute_force(n: int, d: int, k: int, block: int) -> None:
    vectors = _random(n, d, seed=n)
    ours = top_k(vectors, k, block_size=block)

    brute = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(vectors)
    distances, indices = brute.kneighbors(vectors)
    for query in range(n):
        keep = indices[query] != query
        expected = indices[query][keep][:k]
        np.testing.assert_array_equal(ours.positions[query], expected)
        np.testing.assert_allclose(ours.scores[query], 1 - distances[query][keep][:k], atol=1e-5)


def test_ties_break_by_position_whatever_the_block_size() -> None:
    vectors = np.repeat(_random(5, 8, seed=3), 6, axis=0)  # six copies of five vectors
    results = [top_k(vectors, 10, block_size=b) for b in (3, 7, 11, 1000)]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0].positions, other.positions)
        np.testing.assert_array_equal(results[0].scores, other.scores)
    # Product 0's exact copies are 1..5; then the ties of the next-best group, lowest first.
    assert results[0].positions[0, :5].tolist() == [1, 2, 3, 4, 5]
    tail = results[0].positions[0, 5:]
    assert tail.tolist() == sorted(tail.tolist())


def test_short_catalogue_gives_short_lists_and_never_itself() -> None:
    lists = top_k(_random(4, 8), 10)
    assert (lists.lengths() == 3).all()
    assert (lists.positions[:, 3:] == NO_NEIGHBOUR).all()
    for query in range(4):
        assert query not in lists.positions[query]


def test_adding_products_equals_a_full_rebuild() -> None:
    vectors = _random(900, 64, seed=9)
    full = top_k(vectors, 10, block_size=128)
    new = np.arange(3, 900, 7)
    old = np.setdiff1d(np.arange(900), new)
    before = top_k(vectors, 10, block_size=100, queries=old, candidates=old)
    old_after, new_lists = add_to_lists(vectors, before, old, new, 10, block_size=256)
    np.testing.assert_array_equal(old_after.positions, full.positions[old])
    np.testing.assert_array_equal(old_after.scores, full.scores[old])
    assert new_lists is not None
    np.testing.assert_array_equal(new_lists.positions, full.positions[new])
    np.testing.assert_array_equal(new_lists.scores, full.scores[new])


@pytest.mark.parametrize("every", [3, 150])
def test_few_candidates_found_in_numpy_as_faiss_finds_them(
    monkeypatch: pytest.MonkeyPatch, every: int
) -> None:
    """An add's search against its newcomers skips faiss (its threads' wake-up costs more than
    the search): the same lists, whether the candidates outnumber k (200) or not (4)."""
    vectors = _random(600, 32, seed=11)
    candidates = np.arange(0, 600, every)
    assert 0 < len(candidates) <= neighbours._SMALL_BASE
    ours = top_k(vectors, 10, 64, candidates=candidates)
    monkeypatch.setattr(neighbours, "_SMALL_BASE", 0)
    theirs = top_k(vectors, 10, 64, candidates=candidates)
    np.testing.assert_array_equal(ours.positions, theirs.positions)
    np.testing.assert_array_equal(ours.scores, theirs.scores)
    is_candidate = np.isin(np.arange(600), candidates)
    np.testing.assert_array_equal(ours.lengths(), np.minimum(10, len(candidates) - is_candidate))


def test_search_with_outside_queries_equals_brute_force() -> None:
    vectors, queries = _random(400, 16, seed=4), _random(7, 16, seed=5)
    found = search(vectors, queries, 10, block_size=64)
    expected = np.argsort(-(queries.astype(np.float64) @ vectors.T.astype(np.float64)), axis=1)
    np.testing.assert_array_equal(found.positions, expected[:, :10])
    # A query that is a catalogue vector finds itself first: it is not excluded.
    assert search(vectors, vectors[3:4], 1).positions[0, 0] == 3


def _reference(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores of every pair, rounded to float32, full sort by (score desc, position)."""
    scores = (vectors.astype(np.float64) @ vectors.T.astype(np.float64)).astype(np.float32)
    np.fill_diagonal(scores, -np.inf)
    positions = np.arange(len(vectors))
    order = np.array([np.lexsort((positions, -row.astype(np.float64)))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("block", [16, 50, 1000])
def test_near_duplicates_beyond_float32_resolution_are_exact(block: int) -> None:
    # Clusters of 12 vectors that differ by ~1e-7: float32 products cannot order them, so the
    # float64 rescoring and the exact fallback must.
    rng = np.random.default_rng(7)
    centres = np.repeat(rng.normal(size=(20, 64)), 12, axis=0)
    vectors = l2_normalise(centres + rng.normal(scale=1e-7, size=centres.shape))
    found = top_k(vectors, 10, block_size=block)
    positions, scores = _reference(vectors, 10)
    np.testing.assert_array_equal(found.positions, positions)
    np.testing.assert_array_equal(found.scores, scores)
    part = top_k(vectors, 10, block_size=block, queries=np.arange(0, 240, 5))
    np.testing.assert_array_equal(part.positions, positions[::5])


@pytest.mark.parametrize(("rows", "tile"), [(5, 7), (64, 100), (3, 1)])
def test_exact_fallback_across_candidate_tiles(
    monkeypatch: pytest.MonkeyPatch, rows: int, tile: int
) -> None:
    # The fallback scores a few rows against the candidates a tile at a time (bounded memory);
    # lists are the same whatever the tile edges, ties included.
    monkeypatch.setattr(neighbours, "_REDO_ROWS", rows)
    monkeypatch.setattr(neighbours, "_REDO_TILE", tile)
    redone: list[int] = []
    exact_rows = neighbours._exact_rows

    def counted(*args: object, **kwargs: object) -> None:
        redone.append(len(args[4]))  # type: ignore[arg-type]
        exact_rows(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(neighbours, "_exact_rows", counted)
    rng = np.random.default_rng(11)
    centres = np.repeat(rng.normal(size=(15, 32)), 9, axis=0)
    vectors = l2_normalise(centres + rng.normal(scale=1e-7, size=centres.shape))
    vectors = np.concatenate([vectors, vectors[:4]])  # exact copies: ties at equal scores
    found = top_k(vectors, 10, block_size=32)
    assert sum(redone) > 0
    positions, scores = _reference(vectors, 10)
    np.testing.assert_array_equal(found.positions, positions)
    np.testing.assert_array_equal(found.scores, scores)


@pytest.mark.parametrize("d", [64, 1024])
def test_faiss_scans_with_blas_from_a_few_queries_a_call(d: int) -> None:
    """faiss 1.15 keeps BLAS for calls of 2,000 queries or more at d = 64 (its threshold over
    the dimension) and scans with a kernel 2.5-4 times slower a query below: a build's last,
    smaller blocks and adds of many products took that path. top_k lowers the threshold to
    16 queries a call, for every dimension; the lists stay exact either way."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 128_000  # the default of the faiss measured
    vectors = _random(300, d, seed=d)
    ours = top_k(vectors, 10, 64)
    queries = neighbours._BLAS_QUERIES
    expected = queries * d if neighbours._BLAS_BY_DIMENSION else queries
    assert faiss.cvar.distance_compute_blas_threshold == expected
    brute = vectors @ vectors.T
    np.fill_diagonal(brute, -np.inf)
    np.testing.assert_array_equal(ours.positions[:, 0], brute.argmax(axis=1))
