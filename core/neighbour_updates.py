"""What the neighbour table should hold, kept exact: a full rebuild, and the incremental update
after products were added, replaced or deleted, which gives the very same table.

Both take the space they work in (a ``core.spaces.Space``, resolved once per job) and a
``core.space_reader.SpaceReader`` for its vectors and list ends; the table itself is read and
written through ``core.neighbour_table`` under its one lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session

from core import newcomers, partition, twins
from core.approximate import EXACT, BuildSearch
from core.db import in_chunks
from core.list_ends import ListEnds
from core.models import Product
from core.neighbour_table import (
    analyse_lists,
    delete_lists,
    listed_products,
    lists_mentioning,
    lock_neighbour_table,
    log_list_writes,
    read_lists,
    write_lists,
)
from core.neighbours import (
    NO_NEIGHBOUR,
    Neighbours,
    add_to_lists,
    changed_rows,
    empty_lists,
    top_k,
)
from core.newcomers import NewcomerScan
from core.space_reader import SpaceReader
from core.spaces import Space
from core.vectors import VectorSet

# A newcomer is scored against every list's last entry in float32; lists it comes within this
# of are read and merged exactly (float32 errs by far less on unit vectors).
_ENTER_SLACK = 1e-3
# Rows and newcomers per float32 tile of that check.
_ENTER_TILE = (8192, 256)


def rebuild_lists(
    session: Session,
    space: Space,
    reader: SpaceReader,
    k: int,
    block_size: int,
    search: BuildSearch = EXACT,
) -> int:
    """Make the neighbour table exactly the top-k of every vector of ``space`` (or, when
    ``search`` makes a build of this size approximate, ``core.approximate``'s top-k).

    Computes every list, then rewrites only those that differ from the table (and drops lists
    of products without a vector in this space).

    Returns:
        The number of lists written or removed.
    """
    before = lock_neighbour_table(session)
    vectors, _, groups = listed_rows(session, space, reader)
    indexes = search.indexes(vectors.vectors, groups, k)
    fresh = top_k(vectors.vectors, k, block_size, groups=groups, indexes=indexes)
    changed_ids = write_changed(session, space, vectors, vectors.ids, fresh, k)
    orphans = sorted(listed_products(session) - set(vectors.ids))
    delete_lists(session, orphans)
    after = log_list_writes(session, before, changed_ids + orphans)
    analyse_lists(session)
    listed = fresh.positions[:, 0] != NO_NEIGHBOUR
    ends = ListEnds(k, vectors.held_ids, listed, fresh.scores[:, k - 1].copy(), {})
    reader.keep_list_ends(session, space, ends, after)
    return len(changed_ids) + len(orphans)


def write_changed(
    session: Session,
    space: Space,
    vectors: VectorSet,
    product_ids: Sequence[str],
    fresh: Neighbours,
    k: int,
    *,
    part: bool = False,
) -> list[str]:
    """Make the stored lists of ``product_ids`` equal ``fresh`` (theirs, in that order),
    writing only those that differ; returns the ids written. ``part`` as for ``read_lists``."""
    stored, untidy = read_lists(session, vectors, product_ids, space, k, part=part)
    # Lists with rows read as absent (another space's, say) count as changed too.
    untidy_rows = [row for row, pid in enumerate(product_ids) if pid in untidy]
    rows = np.union1d(changed_rows(stored, fresh), np.array(untidy_rows, dtype=np.int64))
    changed_ids = [product_ids[row] for row in rows]
    write_lists(
        session,
        vectors,
        changed_ids,
        Neighbours(fresh.positions[rows], fresh.scores[rows]),
        space,
        Neighbours(stored.positions[rows], stored.scores[rows]),
        untidy,
    )
    return changed_ids


@dataclass(frozen=True)
class _Plan:
    """Which rows of the space an update touches: ``new`` rows (no list yet, or a changed
    vector), lists to ``recompute`` whole, and the old lists some newcomer may enter."""

    new: np.ndarray
    recompute: np.ndarray
    touched: np.ndarray
    gone: list[str]  # lists to remove: their product has no vector here, or a changed one
    scanned: NewcomerScan | None  # a few newcomers: their one pass over every row


def update_lists(
    session: Session,
    space: Space,
    reader: SpaceReader,
    k: int,
    block_size: int,
    stale_ids: Iterable[str] = (),
    repair_ids: Iterable[str] = (),
) -> int:
    """Bring the table up to date after products were added, replaced or deleted.

    Never a full rebuild: products without a list (new ones) and ``stale_ids`` (whose vector
    changed) are scored against everything; lists that held a stale product, and
    ``repair_ids`` (lists that held a product since deleted), are recomputed; every other list
    is only read, merged and written if a newcomer comes close to its last entry. The table
    afterwards equals :func:`rebuild_lists`. Safe to run twice.

    Returns:
        The number of lists written.
    """
    before = lock_neighbour_table(session)  # no other writer until this transaction ends
    stale = set(stale_ids)
    vectors, hidden, groups = listed_rows(session, space, reader)
    # A twin leaves every list it held (it may have stood for its photo until now).
    repair = (lists_mentioning(session, stale | set(hidden)) | set(repair_ids)) - stale
    stored_ends = reader.list_ends(session, space, k, before)
    ends = stored_ends.along(vectors)
    plan = _plan(vectors, ends, stale, repair, groups, k)
    delete_lists(session, plan.gone)

    touched_ids = vectors.ids_at(plan.touched)
    current, untidy = read_lists(session, vectors, touched_ids, space, k)
    updated, _ = add_to_lists(
        vectors.vectors, current, plan.touched, plan.new, k, block_size, False, groups
    )
    rows = changed_rows(current, updated)
    redo = np.flatnonzero(plan.recompute)
    redo_ids = vectors.ids_at(redo)
    fresh = _fresh_lists(vectors.vectors, redo, plan, k, block_size, groups)
    stored, untidy_redo = read_lists(session, vectors, redo_ids, space, k)

    written_ids = [touched_ids[row] for row in rows] + redo_ids
    written = _stack(Neighbours(updated.positions[rows], updated.scores[rows]), fresh)
    previous = _stack(Neighbours(current.positions[rows], current.scores[rows]), stored)
    write_lists(session, vectors, written_ids, written, space, previous, untidy | untidy_redo)
    after = log_list_writes(session, before, written_ids + plan.gone)
    new_ends, empty = _list_ends(written_ids, written, k)
    reader.keep_list_ends(session, space, ends.written(new_ends, plan.gone + empty), after)
    return len(rows) + len(redo)


def listed_rows(
    session: Session, space: Space, reader: SpaceReader
) -> tuple[VectorSet, list[str], np.ndarray | None]:
    """The rows lists are built from: the space's vectors without twins, the twins left out,
    and each row's lookalike group (None: the space is not grouped)."""
    every = reader.vectors(session, space)
    groups = None
    if space.partition:
        groups = partition.group_numbers(session, every.ids, space.partition)
    return twins.visible(session, every, groups)


def _plan(
    vectors: VectorSet,
    ends: ListEnds,
    stale: set[str],
    repair: set[str],
    groups: np.ndarray | None,
    k: int,
) -> _Plan:
    stale_here = vectors.positions_found(stale)
    gone = set(ends.elsewhere) | set(vectors.ids_at(stale_here[ends.listed[stale_here]]))
    is_new = ~ends.listed
    is_new[stale_here] = True
    recompute = is_new.copy()
    recompute[vectors.positions_found(repair)] = True
    new = np.flatnonzero(is_new)
    scanned = None
    if 0 < len(new) <= newcomers.SCAN_MAX:
        # An add: the entry check and the newcomers' own search in one pass over every row;
        # then masks over every row, not the positions of every old one gathered (8 MB each at
        # a million rows: 6 ms of an add).
        scanned = newcomers.scan(vectors.vectors, new, k, groups)
        touched = np.flatnonzero((scanned.best >= ends.floors - _ENTER_SLACK) & ~recompute)
    else:
        old = np.flatnonzero(~recompute)
        touched = old[_may_enter(vectors.vectors, old, new, ends.floors[old], groups)]
    return _Plan(new, recompute, touched, sorted(gone), scanned)


def _fresh_lists(
    x: np.ndarray,
    redo: np.ndarray,
    plan: _Plan,
    k: int,
    block_size: int,
    groups: np.ndarray | None,
) -> Neighbours:
    """The lists of the ``redo`` rows computed whole: the newcomers' from their scan, when
    there is one, the others' by ``top_k``."""
    if plan.scanned is None:
        return top_k(x, k, block_size, queries=redo, groups=groups)
    fresh = empty_lists(len(redo), k)
    scanned = np.isin(redo, plan.new)  # the newcomers, in the same (ascending) order
    lists = newcomers.newcomer_lists(x, plan.scanned, k, groups)
    fresh.positions[scanned], fresh.scores[scanned] = lists.positions, lists.scores
    if not scanned.all():
        rest = top_k(x, k, block_size, queries=redo[~scanned], groups=groups)
        fresh.positions[~scanned], fresh.scores[~scanned] = rest.positions, rest.scores
    return fresh


def _stack(first: Neighbours, second: Neighbours) -> Neighbours:
    return Neighbours(
        np.concatenate([first.positions, second.positions]),
        np.concatenate([first.scores, second.scores]),
    )


def _list_ends(
    product_ids: Sequence[str], lists: Neighbours, k: int
) -> tuple[dict[str, float], list[str]]:
    """The last scores of lists just written (-inf: shorter than k), and the products whose list
    came out empty (no rows)."""
    floors = lists.scores[:, k - 1].astype(np.float64)
    empty = lists.positions[:, 0] == NO_NEIGHBOUR
    kept = dict(zip(product_ids, floors.tolist(), strict=True))
    gone = [pid for pid, none in zip(product_ids, empty.tolist(), strict=True) if none]
    for pid in gone:
        del kept[pid]
    return kept, gone


def _may_enter(
    vectors: np.ndarray,
    old: np.ndarray,
    new: np.ndarray,
    floors: np.ndarray,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Which of the ``old`` lists (last scores ``floors``) some ``new`` vector (of the same
    group, with ``groups``) may enter.

    A float32 bound, never an exact test: a list it passes is read and merged exactly, and one
    it rejects cannot change, since no newcomer comes within float32's error of its last entry.
    """
    if len(old) == 0 or len(new) == 0:
        return np.zeros(len(old), dtype=bool)
    x = np.asarray(vectors, dtype=np.float32)
    if groups is None:
        return np.asarray(_best_score(x, old, new) >= floors - _ENTER_SLACK)
    enters = np.zeros(len(old), dtype=bool)
    old_groups, new_groups = groups[old], groups[new]
    for group in np.unique(new_groups):
        rows = np.flatnonzero(old_groups == group)
        best = _best_score(x, old[rows], new[new_groups == group])
        enters[rows] = best >= floors[rows] - _ENTER_SLACK
    return enters


def _best_score(x: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Each ``old`` row's best float32 score against the ``new`` rows."""
    candidates = x[new]
    if 2 * len(old) >= len(x):
        # Most rows (an add): every row scored in place, then the old ones taken, rather than
        # gathering them first (a copy of the whole array at a million rows).
        return np.asarray(_tiled_best(x, candidates)[old])
    height = _ENTER_TILE[0]
    parts = [_tiled_best(x[old[r0 : r0 + height]], candidates) for r0 in range(0, len(old), height)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _tiled_best(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each of ``rows``' best float32 score against ``candidates``, a tile at a time."""
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    height, width = _ENTER_TILE
    for r0 in range(0, len(rows), height):
        block = rows[r0 : r0 + height]
        for c0 in range(0, len(candidates), width):
            tile = block @ candidates[c0 : c0 + width].T
            np.maximum(best[r0 : r0 + height], tile.max(axis=1), out=best[r0 : r0 + height])
    return best


def delete_products(
    session: Session,
    product_ids: Sequence[str],
    space: Space,
    reader: SpaceReader,
    k: int,
    block_size: int,
) -> int:
    """Delete products and repair every list that held one of them.

    Returns:
        The number of lists rewritten.
    """
    before = lock_neighbour_table(session)
    affected = lists_mentioning(session, product_ids)
    for chunk in in_chunks(list(product_ids)):
        # Cascades remove their vectors; a trigger (migration 0016) their lists and their
        # places in other lists.
        session.execute(delete(Product).where(Product.id.in_(chunk)))
    session.flush()
    # That trigger wrote lists too: logged, so that list ends kept elsewhere follow them.
    log_list_writes(session, before, sorted(affected | set(product_ids)))
    return update_lists(session, space, reader, k, block_size, repair_ids=affected)
