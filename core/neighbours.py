"""Exact cosine top-k neighbours.

Vectors are L2-normalised, so cosine similarity is a dot product. Rows are positions in an
array of products sorted by id; ties in score break towards the smaller position (the smaller
id), so results are deterministic. Faiss's exact flat index finds each query's best few
candidates by float32 score, in blocks of queries, keeping only a heap per query: memory stays
O(N·d + block). The candidates are then rescored in float64.

Scores are computed in float64 and rounded to float32, so a pair gets the same score whatever
blocks it was computed in: an incremental update then matches a full rebuild exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from core.approximate import CANDIDATES_OVER, IvfSearch

NO_NEIGHBOUR = -1


@dataclass
class Neighbours:
    """Top-k lists: ``positions[i, r]`` is the rank-r neighbour of query i (-1 when absent)."""

    positions: np.ndarray  # (m, k) int64
    scores: np.ndarray  # (m, k) float32, -inf where absent

    def lengths(self) -> np.ndarray:
        return np.asarray((self.positions != NO_NEIGHBOUR).sum(axis=1))


def empty_lists(count: int, k: int) -> Neighbours:
    return Neighbours(
        positions=np.full((count, k), NO_NEIGHBOUR, dtype=np.int64),
        scores=np.full((count, k), -np.inf, dtype=np.float32),
    )


def merge(a: Neighbours, b: Neighbours, k: int) -> Neighbours:
    """Best k of two sets of lists over disjoint candidates, by (score desc, position asc)."""
    positions = np.concatenate([a.positions, b.positions], axis=1)
    scores = np.concatenate([a.scores, b.scores], axis=1)
    # Absent entries sort last: score -inf, and a position larger than any real one.
    tiebreak = np.where(positions == NO_NEIGHBOUR, np.iinfo(np.int64).max, positions)
    order = np.lexsort((tiebreak, -scores.astype(np.float64)), axis=1)[:, :k]
    return Neighbours(
        positions=np.take_along_axis(positions, order, axis=1),
        scores=np.take_along_axis(scores, order, axis=1),
    )


def top_k(
    vectors: np.ndarray,
    k: int,
    block_size: int = 2048,
    queries: Sequence[int] | np.ndarray | None = None,
    candidates: Sequence[int] | np.ndarray | None = None,
    groups: np.ndarray | None = None,
    indexes: Mapping[int, IvfSearch] | None = None,
) -> Neighbours:
    """Exact top-k cosine neighbours of ``queries`` among ``candidates``, never itself.

    Args:
        vectors: (N, d) L2-normalised rows, ordered by product id.
        k: neighbours per query.
        block_size: queries per block handed to faiss.
        queries: positions to find neighbours for (default: all).
        candidates: positions that may be neighbours (default: all).
        groups: a group number per row (``core.partition``): a query's neighbours then come
            from its own group only (default: one group).
        indexes: approximate search (``core.approximate``): an index of every row of a group
            (group 0 when ungrouped) finds that group's candidates instead of a full scan;
            groups without one are searched exactly.

    Returns:
        Lists for each query, in the order of ``queries``.
    """
    n = len(vectors)
    query_pos = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    # Ascending, so that ties favour the smaller position (np.arange is: no sort of 1M rows).
    cand_pos = np.arange(n) if candidates is None else np.sort(np.asarray(candidates, np.int64))
    indexes = indexes or {}
    if groups is None:
        return _search(vectors, query_pos, vectors, cand_pos, k, block_size, indexes.get(0))
    result = empty_lists(len(query_pos), k)
    query_groups, cand_groups = groups[query_pos], groups[cand_pos]
    for group in np.unique(query_groups):
        rows = np.flatnonzero(query_groups == group)
        within = cand_pos[cand_groups == group]
        index = indexes.get(int(group))
        found = _search(vectors, query_pos[rows], vectors, within, k, block_size, index)
        result.positions[rows], result.scores[rows] = found.positions, found.scores
    return result


def search(vectors: np.ndarray, queries: np.ndarray, k: int, block_size: int = 2048) -> Neighbours:
    """Exact top-k among ``vectors`` for outside ``queries`` (photos not in the catalogue)."""
    outside = np.full(len(queries), -1, dtype=np.int64)
    return _search(queries, outside, vectors, np.arange(len(vectors)), k, block_size)


# Candidates are found with float32 products (fast), then rescored in float64. A true top-k
# neighbour can only be missed by float32 if more than _MARGIN others score within float32's
# error of it; rows where that is possible are recomputed exactly (see rescore).
_MARGIN = CANDIDATES_OVER
# Bound on the float32 error of a dot product of two unit vectors (d * 2**-24 is 3e-5 for
# d = 512), with room to spare.
_EPS = 2e-4
_FINISH_ROWS = 512
# Up to this many candidates (an add's newcomers) are scored with numpy, not faiss.
_SMALL_BASE = 256
# The exact fallback: rows at a time, and candidates per tile (64 x 65,536 float64 = 32 MB).
_REDO_ROWS = 64
_REDO_TILE = 65_536
# Faiss scans the candidates with BLAS only for a call of enough queries, and with a kernel of
# its own below that: from distance_compute_blas_threshold queries in older versions (20), from
# that threshold divided by the dimension in the one measured here (1.15: 128,000, so 2,000
# queries a call at d = 64). Against 1M candidates its kernel took 2.5-4 times as long a query
# as BLAS does from about 16 queries a call (BENCHMARKS.md, a tenth day): what a build's last,
# smaller blocks, the last queries of every block and an add of many products paid. BLAS from
# this many queries a call, whatever the version:
_BLAS_QUERIES = 16
_BLAS_BY_DIMENSION = faiss.cvar.distance_compute_blas_threshold > 1_000  # the newer rule


def _blas_from_few_queries(d: int) -> None:
    faiss.cvar.distance_compute_blas_threshold = _BLAS_QUERIES * (d if _BLAS_BY_DIMENSION else 1)


def _search(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    k: int,
    block_size: int,
    index: IvfSearch | None = None,
) -> Neighbours:
    """Top-k of ``query_vectors`` (whose own positions are ``query_pos``, -1 for none) among
    ``vectors[cand_pos]`` (ascending); with ``index`` (holding exactly those rows),
    approximately."""
    count = len(query_pos)
    if count == 0 or len(cand_pos) == 0:
        return empty_lists(count, k)
    if index is not None and not np.array_equal(index.positions, cand_pos):
        raise ValueError("an approximate index must hold exactly the candidate rows")
    running = _float32_candidates(
        query_vectors, query_pos, vectors, cand_pos, k + _MARGIN, block_size, index
    )
    return rescore(query_vectors, query_pos, vectors, cand_pos, running, k, settle=index is None)


def _float32_candidates(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    keep: int,
    block_size: int,
    ivf: IvfSearch | None = None,
) -> Neighbours:
    """The best ``keep`` candidates of each query by float32 score, best first, never itself.

    Faiss's exact k-NN is a scan of the candidates in place (BLAS products, a heap per query,
    OpenMP threads; no index, so no copy of a million vectors for one newcomer); the order it
    gives tied scores does not matter, as rescore re-sorts by exact score. An ``ivf`` index
    scans only the rows of the lists nearest each query.
    """
    x32 = np.ascontiguousarray(vectors, dtype=np.float32)
    external = query_vectors is not vectors
    base = x32 if ivf is not None or len(cand_pos) == len(x32) else x32[cand_pos]

    def search(queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        if ivf is not None:
            found: tuple[np.ndarray, np.ndarray] = ivf.index.search(queries, count)
            return found
        if len(base) <= _SMALL_BASE:
            return _small_knn(queries, base, count)
        return faiss.knn(queries, base, count, metric=faiss.METRIC_INNER_PRODUCT)

    _blas_from_few_queries(vectors.shape[1])
    # One more than needed, so that a query's own entry can be dropped.
    wanted = min(keep + 1, len(cand_pos))
    running = empty_lists(len(query_pos), keep)
    width = min(keep, wanted)
    for q0 in range(0, len(query_pos), block_size):
        rows = slice(q0, min(q0 + block_size, len(query_pos)))
        own = query_pos[rows]
        queries = query_vectors[rows] if external else x32[own]
        scores, labels = search(np.ascontiguousarray(queries, dtype=np.float32), wanted)
        positions = np.where(labels >= 0, cand_pos[labels], NO_NEIGHBOUR)
        positions[positions == own[:, None]] = NO_NEIGHBOUR
        # A stable sort by absence keeps faiss's best-first order and moves gaps to the end.
        order = np.argsort(positions == NO_NEIGHBOUR, axis=1, kind="stable")[:, :width]
        picked = np.take_along_axis(positions, order, axis=1)
        running.positions[rows, :width] = picked
        running.scores[rows, :width] = np.where(
            picked == NO_NEIGHBOUR, -np.inf, np.take_along_axis(scores, order, axis=1)
        )
    return running


def _small_knn(queries: np.ndarray, base: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``faiss.knn``'s answer (scores and labels, best first) for a few candidates, in this
    thread: an add's lists searched against its newcomers. Faiss would wake its OpenMP threads
    for it, and on a worker whose BLAS threads still spin after the newcomer scan that took
    1-12 ms for a product of a few kilobytes (BENCHMARKS.md, a sixth day)."""
    scores = queries @ base.T
    if count < scores.shape[1]:
        part = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    chosen = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    return np.take_along_axis(chosen, order, axis=1), np.take_along_axis(part, order, axis=1)


def _exclude_self(tile: np.ndarray, own: np.ndarray, cols: np.ndarray) -> None:
    """Never a product's own neighbour: -inf where a row's position is among ``cols``."""
    at = np.searchsorted(cols, own)
    inside = (at < len(cols)) & (own >= 0)
    hit = np.flatnonzero(inside)
    hit = hit[cols[at[hit]] == own[hit]]
    tile[hit, at[hit]] = -np.inf


def rescore(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    running: Neighbours,
    k: int,
    settle: bool = True,
) -> Neighbours:
    """Rescore the float32 candidates in float64, keep the best k, and (``settle``) redo
    exactly any row where float32 could have hidden a better candidate."""
    external = query_vectors is not vectors
    result = empty_lists(len(query_pos), k)
    uncertain: list[np.ndarray] = []
    for r0 in range(0, len(query_pos), _FINISH_ROWS):
        rows = slice(r0, min(r0 + _FINISH_ROWS, len(query_pos)))
        pos = running.positions[rows]
        valid = pos != NO_NEIGHBOUR
        own = np.arange(rows.start, rows.stop) if external else query_pos[rows]
        q64 = np.asarray(query_vectors[own], dtype=np.float64)
        c64 = np.asarray(vectors[np.where(valid, pos, 0)], dtype=np.float64)
        exact = np.einsum("bd,bkd->bk", q64, c64).astype(np.float32)
        exact[~valid] = -np.inf
        tiebreak = np.where(valid, pos, np.iinfo(np.int64).max)
        order = np.lexsort((tiebreak, -exact.astype(np.float64)), axis=1)[:, :k]
        best = np.take_along_axis(exact, order, axis=1)
        result.positions[rows] = np.where(
            np.isneginf(best), NO_NEIGHBOUR, np.take_along_axis(pos, order, axis=1)
        )
        result.scores[rows] = best
        # A row whose candidate list was full may have cut one that float32 underrated.
        cut_off = running.scores[rows][:, -1]
        doubt = valid.all(axis=1) & (cut_off >= best[:, -1] - _EPS)
        uncertain.append(np.flatnonzero(doubt) + r0)
    redo = np.concatenate(uncertain)
    if settle and redo.size:
        _exact_rows(query_vectors, query_pos, vectors, cand_pos, redo, result, external)
    return result


def _exact_rows(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    redo: np.ndarray,
    result: Neighbours,
    external: bool,
) -> None:
    """Full float64 scoring of a few rows against every candidate, a tile of candidates at a
    time: memory is O(rows x tile), not a float64 copy of every candidate (512 MB at 1M x 64)."""
    width = min(result.positions.shape[1], len(cand_pos))
    for r0 in range(0, len(redo), _REDO_ROWS):
        chunk = redo[r0 : r0 + _REDO_ROWS]
        own = chunk if external else query_pos[chunk]
        q64 = np.asarray(query_vectors[own], dtype=np.float64)
        best = empty_lists(len(chunk), width)
        for c0 in range(0, len(cand_pos), _REDO_TILE):
            cols = cand_pos[c0 : c0 + _REDO_TILE]
            scores = (q64 @ np.asarray(vectors[cols], dtype=np.float64).T).astype(np.float32)
            if not external:
                _exclude_self(scores, query_pos[chunk], cols)
            best = merge(best, _tile_best(scores, cols, width), width)
        result.positions[chunk, :width] = best.positions
        result.scores[chunk, :width] = best.scores


def _tile_best(scores: np.ndarray, cols: np.ndarray, width: int) -> Neighbours:
    """Each row's best ``width`` of one tile by (score desc, position asc); ``cols`` are the
    tile's positions, ascending."""
    found = empty_lists(len(scores), width)
    take = min(width, scores.shape[1])
    # Only what scores at least a row's take-th best can be in its list (ties included).
    bar = -np.partition(-scores, take - 1, axis=1)[:, take - 1]
    line, col = np.nonzero(scores >= bar[:, None])
    line, col, picked, rank = first_of_each(line, col, scores[line, col], take)
    found.positions[line, rank] = np.where(np.isneginf(picked), NO_NEIGHBOUR, cols[col])
    found.scores[line, rank] = picked
    return found


def first_of_each(
    owner: np.ndarray, position: np.ndarray, score: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries (``owner``, ``position``, ``score``) cut to each owner's first ``width`` by
    (score desc, position asc), sorted so, with each one's rank in its owner's list."""
    order = np.lexsort((position, -score.astype(np.float64), owner))
    owner, position, score = owner[order], position[order], score[order]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    chosen = rank < width
    return owner[chosen], position[chosen], score[chosen], rank[chosen]


def add_to_lists(
    vectors: np.ndarray,
    current: Neighbours,
    old: np.ndarray,
    new: np.ndarray,
    k: int,
    block_size: int = 2048,
    new_lists: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[Neighbours, Neighbours | None]:
    """Neighbour lists after adding ``new`` products to a catalogue whose lists are ``current``.

    Args:
        vectors: all vectors, old and new, ordered by product id.
        current: the lists of the ``old`` positions, in that order.
        old: positions of products that already had lists.
        new: positions of the products being added.
        new_lists: also compute the lists of ``new`` (else None is returned for them).
        groups: as for :func:`top_k`.

    Returns:
        (lists of ``old`` after the addition, lists of ``new``). The result equals
        :func:`top_k` over everything (with the same ``groups``).
    """
    # An old list cannot already hold a new product; drop any such entry so it is not doubled.
    held = np.isin(current.positions, new)
    if held.any():
        current = Neighbours(
            np.where(held, NO_NEIGHBOUR, current.positions),
            np.where(held, np.float32(-np.inf), current.scores),
        )
    entering = top_k(vectors, k, block_size, queries=old, candidates=new, groups=groups)
    added = top_k(vectors, k, block_size, queries=new, groups=groups) if new_lists else None
    return merge(current, entering, k), added


def changed_rows(before: Neighbours, after: Neighbours) -> np.ndarray:
    """Row numbers whose list differs in any neighbour or score."""
    differs = (before.positions != after.positions) | (before.scores != after.scores)
    return np.flatnonzero(differs.any(axis=1))
