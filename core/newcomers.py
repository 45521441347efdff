"""An add's one pass over the catalogue's vectors.

Adding a few products to N needs two things of the same N x m float32 products: for every old
list, whether some newcomer comes near its last entry (``core.neighbour_updates``' entry
check), and for each newcomer its own best candidates among all N. :func:`scan` computes those
products once, a tile of rows at a time, and keeps both; at a million rows that is one read of
the 256 MB array instead of two (faiss's search for the newcomers, then the check).

:func:`newcomer_lists` then rescores the candidates exactly, as ``core.neighbours.top_k`` does
its own (``core.neighbours.rescore``), so the lists are the very ones ``top_k`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.approximate import CANDIDATES_OVER
from core.neighbours import Neighbours, empty_lists, first_of_each, merge, rescore

# Newcomers one scan serves: beyond this, faiss's blocked search is the better tool.
SCAN_MAX = 256
_TILE_VALUES = 1 << 22  # scores per tile (16 MB): a million rows for one newcomer
_SAMPLE = 16_384  # values a first bar is drawn from


@dataclass(frozen=True)
class NewcomerScan:
    """What one pass found: ``best[row]`` is the row's best float32 score against a newcomer
    of its group (-inf: none; a newcomer's own score is left out), and ``candidates`` each
    newcomer's best float32 candidates, best first, never itself."""

    new: np.ndarray
    best: np.ndarray
    candidates: Neighbours


def scan(
    vectors: np.ndarray, new: np.ndarray, k: int, groups: np.ndarray | None = None
) -> NewcomerScan:
    """Score the ``new`` rows against every row of ``vectors`` (of their own group, with
    ``groups``), once."""
    x = np.asarray(vectors, dtype=np.float32)
    new = np.asarray(new, dtype=np.int64)
    queries = np.ascontiguousarray(x[new])
    new_groups = None if groups is None else groups[new]
    best = np.full(len(x), -np.inf, dtype=np.float32)
    found = empty_lists(len(new), k + CANDIDATES_OVER)  # as many as top_k keeps
    height = max(_TILE_VALUES // max(len(new), 1), 1)
    for r0 in range(0, len(x), height):
        r1 = min(r0 + height, len(x))
        tile = x[r0:r1] @ queries.T
        if groups is not None and new_groups is not None:
            tile[groups[r0:r1, None] != new_groups[None, :]] = -np.inf
        inside = np.flatnonzero((new >= r0) & (new < r1))
        tile[new[inside] - r0, inside] = -np.inf  # never its own neighbour
        if len(new):
            np.max(tile, axis=1, out=best[r0:r1])
        found = _keep_best(found, tile, r0)
    return NewcomerScan(new, best, found)


def _keep_best(found: Neighbours, tile: np.ndarray, r0: int) -> Neighbours:
    """``found`` with the tile's rows (positions from ``r0``) that reach a newcomer's kept
    candidates, by (score desc, position asc)."""
    keep = found.positions.shape[1]
    bar = found.scores[:, -1].copy()
    for column in np.flatnonzero(np.isneginf(bar)):
        bar[column] = _first_bar(tile[:, column], keep)
    reach = tile >= bar[None, :]
    if np.isneginf(bar).any():
        reach &= tile > -np.inf
    line, col = np.divmod(np.flatnonzero(reach), tile.shape[1])
    if not len(line):
        return found
    col, line, picked, rank = first_of_each(col, line, tile[line, col], keep)
    changed = np.unique(col)
    entering = empty_lists(len(changed), keep)
    at = np.searchsorted(changed, col)
    entering.positions[at, rank] = line + r0
    entering.scores[at, rank] = picked
    current = Neighbours(found.positions[changed], found.scores[changed])
    merged = merge(current, entering, keep)
    found.positions[changed], found.scores[changed] = merged.positions, merged.scores
    return found


def _first_bar(scores: np.ndarray, keep: int) -> np.float32:
    """A score that at least ``keep`` of ``scores`` reach (-inf: fewer are finite): the
    keep-th best of an even sample, so that a list's first fill sorts a few entries, not all."""
    finite = scores[scores > -np.inf]
    if len(finite) <= keep:
        return np.float32(-np.inf)
    sample = finite[:: max(len(finite) // _SAMPLE, 1)]
    if len(sample) < keep:
        sample = finite
    return np.float32(np.partition(sample, len(sample) - keep)[len(sample) - keep])


def newcomer_lists(
    vectors: np.ndarray, found: NewcomerScan, k: int, groups: np.ndarray | None = None
) -> Neighbours:
    """The exact top-k lists of the scanned newcomers (in the order of ``found.new``): equal
    to ``core.neighbours.top_k(vectors, k, queries=found.new, groups=groups)``."""
    if groups is None:
        return rescore(vectors, found.new, vectors, np.arange(len(vectors)), found.candidates, k)
    result = empty_lists(len(found.new), k)
    new_groups = groups[found.new]
    for group in np.unique(new_groups):
        rows = np.flatnonzero(new_groups == group)
        within = np.flatnonzero(groups == group)
        candidates = Neighbours(found.candidates.positions[rows], found.candidates.scores[rows])
        lists = rescore(vectors, found.new[rows], vectors, within, candidates, k)
        result.positions[rows], result.scores[rows] = lists.positions, lists.scores
    return result
