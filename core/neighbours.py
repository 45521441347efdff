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


def _block_topk(scores: np.ndarray, columns: np.ndarray, k: int) -> Neighbours:
    """Top-k of each row of a score block whose columns are the global ``columns``."""
    rows, width = scores.shape
    if width <= k:
        order = np.broadcast_to(np.arange(width), (rows, width))
    else:
        order = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # argpartition picks arbitrarily among scores tied at the k-th value; redo those rows
        # so the smaller position wins, as in a full sort.
        kth = np.take_along_axis(scores, order, axis=1).min(axis=1)
        tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        if tied.size:
            order = order.copy()
            for row in tied:
                candidates = np.flatnonzero(scores[row] >= kth[row])
                best = np.lexsort((candidates, -scores[row, candidates].astype(np.float64)))
                order[row] = candidates[best[:k]]
    picked = np.take_along_axis(scores, order, axis=1)
    positions = np.where(np.isneginf(picked), NO_NEIGHBOUR, columns[order])
    result = empty_lists(rows, k)
    result.positions[:, : order.shape[1]] = positions
    result.scores[:, : order.shape[1]] = picked
    return result


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
    result = empty_lists(len(query_pos), k)
    if len(query_pos) == 0 or len(cand_pos) == 0:
        return result
    # Candidate order must be ascending for the position tie-break inside a block.
    cand_pos = np.sort(cand_pos)
    external = query_vectors is not vectors
    for q0 in range(0, len(query_pos), block_size):
        q_block = query_pos[q0 : q0 + block_size]
        rows = np.arange(q0, q0 + len(q_block)) if external else q_block
        q_vecs = query_vectors[rows].astype(np.float64)
        running = empty_lists(len(q_block), k)
        for c0 in range(0, len(cand_pos), block_size):
            c_block = cand_pos[c0 : c0 + block_size]
            block = (q_vecs @ vectors[c_block].astype(np.float64).T).astype(np.float32)
            block[q_block[:, None] == c_block[None, :]] = -np.inf  # never its own neighbour
            running = merge(running, _block_topk(block, c_block, k), k)
        result.positions[q0 : q0 + len(q_block)] = running.positions
        result.scores[q0 : q0 + len(q_block)] = running.scores
    return result


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
