"""Exact cosine top-k neighbours, computed in blocks.

Vectors are L2-normalised, so cosine similarity is a dot product. Rows are positions in an
array of products sorted by id; ties in score break towards the smaller position (the smaller
id), so results are deterministic. Memory stays O(N·d + block²): a query block is scored
against one candidate block at a time and only a running top-k is kept per query.

Scores are computed in float64 and rounded to float32, so a pair gets the same score whatever
blocks it was computed in: an incremental update then matches a full rebuild exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
) -> Neighbours:
    """Exact top-k cosine neighbours of ``queries`` among ``candidates``, never itself.

    Args:
        vectors: (N, d) L2-normalised rows, ordered by product id.
        k: neighbours per query.
        block_size: rows per query block and per candidate block.
        queries: positions to find neighbours for (default: all).
        candidates: positions that may be neighbours (default: all).

    Returns:
        Lists for each query, in the order of ``queries``.
    """
    n = len(vectors)
    query_pos = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    cand_pos = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
    return _search(vectors, query_pos, vectors, cand_pos, k, block_size)


def search(vectors: np.ndarray, queries: np.ndarray, k: int, block_size: int = 2048) -> Neighbours:
    """Exact top-k among ``vectors`` for outside ``queries`` (photos not in the catalogue)."""
    outside = np.full(len(queries), -1, dtype=np.int64)
    return _search(queries, outside, vectors, np.arange(len(vectors)), k, block_size)


# Candidates are found with float32 products (fast), then rescored in float64. A true top-k
# neighbour can only be missed by float32 if more than _MARGIN others score within float32's
# error of it; rows where that is possible are recomputed exactly (see _finish).
_MARGIN = 6
# Bound on the float32 error of a dot product of two unit vectors (d * 2**-24 is 3e-5 for
# d = 512), with room to spare.
_EPS = 2e-4
_FINISH_ROWS = 512


def _search(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    k: int,
    block_size: int,
) -> Neighbours:
    """Top-k of ``query_vectors`` (whose own positions are ``query_pos``, -1 for none) among
    ``vectors[cand_pos]``."""
    count = len(query_pos)
    if count == 0 or len(cand_pos) == 0:
        return empty_lists(count, k)
    cand_pos = np.sort(cand_pos)  # ascending, so that ties favour the smaller position
    keep = k + _MARGIN
    running = empty_lists(count, keep)
    x32 = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x32)
    everything = np.arange(n)
    if (
        query_vectors is vectors
        and len(query_pos) == n
        and len(cand_pos) == n
        and np.array_equal(query_pos, everything)
        and np.array_equal(cand_pos, everything)
    ):
        # Every product against every other: scores are symmetric, so each tile above the
        # diagonal serves both its rows and, transposed, its columns. Diagonal tiles go first,
        # so that every row has a threshold before it meets a transposed tile.
        blocks = [slice(i0, min(i0 + block_size, n)) for i0 in range(0, n, block_size)]
        for block in blocks:
            tile = x32[block] @ x32[block].T
            np.fill_diagonal(tile, -np.inf)
            _absorb(running, block, tile, everything[block], keep)
        for i, rows in enumerate(blocks):
            for cols in blocks[i + 1 :]:
                tile = x32[rows] @ x32[cols].T
                _absorb(running, rows, tile, everything[cols], keep)
                _absorb(running, cols, tile, everything[rows], keep, transposed=True)
    else:
        candidates = x32[cand_pos]
        queries = np.ascontiguousarray(
            query_vectors if query_vectors is not vectors else x32[query_pos], dtype=np.float32
        )
        for q0 in range(0, count, block_size):
            block = slice(q0, min(q0 + block_size, count))
            own = query_pos[block]
            for c0 in range(0, len(cand_pos), block_size):
                columns = cand_pos[c0 : c0 + block_size]
                tile = queries[block] @ candidates[c0 : c0 + block_size].T
                _exclude_self(tile, own, columns)
                _absorb(running, block, tile, columns, keep)
    return _finish(query_vectors, query_pos, vectors, cand_pos, running, k)


def _exclude_self(tile: np.ndarray, own: np.ndarray, cols: np.ndarray) -> None:
    """Never a product's own neighbour: -inf where a row's position is among ``cols``."""
    at = np.searchsorted(cols, own)
    inside = (at < len(cols)) & (own >= 0)
    hit = np.flatnonzero(inside)
    hit = hit[cols[at[hit]] == own[hit]]
    tile[hit, at[hit]] = -np.inf


def _absorb(
    running: Neighbours,
    rows: slice,
    tile: np.ndarray,
    cols: np.ndarray,
    keep: int,
    transposed: bool = False,
) -> None:
    """Merge a tile of float32 scores into the running best ``keep`` of ``rows``.

    With ``transposed`` the tile's columns are the rows (a tile used for both sides of the
    symmetric build); it is read in its own memory order instead of being copied.
    """
    held_pos = running.positions[rows]
    held = running.scores[rows]
    threshold = held[:, -1]
    height = held.shape[0]
    beats = tile > (threshold[None, :] if transposed else threshold[:, None])
    if len(cols) > keep and np.count_nonzero(beats) > 2 * keep * height:
        # Early tiles: most entries beat the threshold; cut each row to its best few first.
        scores = np.ascontiguousarray(tile.T) if transposed else tile
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        r = np.repeat(np.arange(height), keep)
        c = part.ravel()
        s = scores[r, c]
        good = s > threshold[r]
        r, c, s = r[good], c[good], s[good]
    else:
        first, second = np.nonzero(beats)
        if first.size == 0:
            return
        s = tile[first, second]
        r, c = (second, first) if transposed else (first, second)
    all_rows = np.concatenate([np.repeat(np.arange(height), keep), r])
    all_scores = np.concatenate([held.ravel(), s])
    all_pos = np.concatenate([held_pos.ravel(), cols[c]])
    tiebreak = np.where(all_pos == NO_NEIGHBOUR, np.iinfo(np.int64).max, all_pos)
    order = np.lexsort((tiebreak, -all_scores.astype(np.float64), all_rows))
    sorted_rows = all_rows[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_rows, np.arange(height))[sorted_rows]
    chosen = rank < keep
    held_pos[sorted_rows[chosen], rank[chosen]] = all_pos[order][chosen]
    held[sorted_rows[chosen], rank[chosen]] = all_scores[order][chosen]


def _finish(
    query_vectors: np.ndarray,
    query_pos: np.ndarray,
    vectors: np.ndarray,
    cand_pos: np.ndarray,
    running: Neighbours,
    k: int,
) -> Neighbours:
    """Rescore the float32 candidates in float64, keep the best k, and redo exactly any row
    where float32 could have hidden a better candidate."""
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
    if redo.size:
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
    """Full float64 scoring of a few rows against every candidate."""
    k = result.positions.shape[1]
    c64 = np.asarray(vectors[cand_pos], dtype=np.float64)
    for r0 in range(0, len(redo), 256):
        chunk = redo[r0 : r0 + 256]
        own = chunk if external else query_pos[chunk]
        scores = (np.asarray(query_vectors[own], dtype=np.float64) @ c64.T).astype(np.float32)
        if not external:
            _exclude_self(scores, query_pos[chunk], cand_pos)
        for line, row in zip(scores, chunk, strict=True):
            order = np.lexsort((cand_pos, -line.astype(np.float64)))[:k]
            picked = line[order]
            result.positions[row, : len(order)] = np.where(
                np.isneginf(picked), NO_NEIGHBOUR, cand_pos[order]
            )
            result.scores[row, : len(order)] = picked


def add_to_lists(
    vectors: np.ndarray,
    current: Neighbours,
    old: np.ndarray,
    new: np.ndarray,
    k: int,
    block_size: int = 2048,
    new_lists: bool = True,
) -> tuple[Neighbours, Neighbours | None]:
    """Neighbour lists after adding ``new`` products to a catalogue whose lists are ``current``.

    Args:
        vectors: all vectors, old and new, ordered by product id.
        current: the lists of the ``old`` positions, in that order.
        old: positions of products that already had lists.
        new: positions of the products being added.
        new_lists: also compute the lists of ``new`` (else None is returned for them).

    Returns:
        (lists of ``old`` after the addition, lists of ``new``). The result equals
        :func:`top_k` over everything.
    """
    # An old list cannot already hold a new product; drop any such entry so it is not doubled.
    held = np.isin(current.positions, new)
    if held.any():
        current = Neighbours(
            np.where(held, NO_NEIGHBOUR, current.positions),
            np.where(held, np.float32(-np.inf), current.scores),
        )
    entering = top_k(vectors, k, block_size, queries=old, candidates=new)
    added = top_k(vectors, k, block_size, queries=new) if new_lists else None
    return merge(current, entering, k), added


def changed_rows(before: Neighbours, after: Neighbours) -> np.ndarray:
    """Row numbers whose list differs in any neighbour or score."""
    differs = (before.positions != after.positions) | (before.scores != after.scores)
    return np.flatnonzero(differs.any(axis=1))
