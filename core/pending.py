"""What a grown set of vectors holds before anything reads it whole: rows waiting to be
inserted into its last written array (``Insertion``) and ids waiting to be merged into its last
list (``PendingIds``). ``core.vectors.VectorSet`` writes them when first read; until then an
add looks rows and ids up through them (at a million rows a written array is a 256 MB copy,
and a list of every id takes 8 ms to make and 7 ms to free)."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core import row_buffers

# Up to this many ids are inserted into a copy of a list one by one, more merged in one pass.
_INSERTS_MAX = 16


@dataclass(frozen=True, eq=False)
class Insertion:
    """Rows to be inserted into a written array (as ``numpy.insert(base, at, rows, axis=0)``,
    ``at`` ascending): a grown set's array before anything has read it."""

    base: np.ndarray
    at: np.ndarray
    rows: np.ndarray

    @classmethod
    def into(cls, base: np.ndarray) -> Insertion:
        """Nothing yet to insert into ``base``."""
        return cls(base, np.zeros(0, dtype=np.int64), np.zeros((0, base.shape[1]), base.dtype))

    @functools.cached_property
    def placed(self) -> np.ndarray:
        """Where each inserted row is in the written array (as numpy.insert puts it)."""
        return self.at + np.arange(len(self.at))

    def then(self, at: np.ndarray, rows: np.ndarray) -> Insertion:
        """The same array with ``rows`` inserted at ``at`` (its own positions) too, still
        unwritten: one insertion into ``base``."""
        placed = self.placed
        moved = placed + np.searchsorted(at, placed, side="right")
        placed_now = np.concatenate([moved, at + np.arange(len(at))])
        order = np.argsort(placed_now, kind="stable")
        every = np.concatenate([self.rows, rows])[order]
        return Insertion(self.base, placed_now[order] - np.arange(len(order)), every)

    def written(self) -> np.ndarray:
        return row_buffers.inserted(self.base, self.at, self.rows)

    def without(self, dropped: np.ndarray) -> np.ndarray | Insertion:
        """The same without the rows at ``dropped`` (ascending positions of the written
        array), still unwritten: ``base`` copied without its own rows among them, if any."""
        placed = self.placed
        inserted = np.isin(dropped, placed)
        keep_rows = np.ones(len(placed), dtype=bool)
        keep_rows[np.searchsorted(placed, dropped[inserted])] = False
        from_base = dropped[~inserted]
        base = self.base
        if len(from_base):
            keep = np.ones(len(base), dtype=bool)
            keep[from_base - np.searchsorted(placed, from_base)] = False
            base = row_buffers.kept_rows(base, keep)
        left = placed[keep_rows]
        if not len(left):
            return base
        # Each row left moves back by the dropped rows before it.
        at = left - np.searchsorted(dropped, left) - np.arange(len(left))
        return Insertion(base, at, self.rows[keep_rows])

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows the written array would have at ``positions``, without writing it."""
        placed = self.placed
        before = np.searchsorted(placed, positions)  # inserted rows before each position
        inserted = np.zeros(len(positions), dtype=bool)
        inside = before < len(placed)
        inserted[inside] = placed[before[inside]] == positions[inside]
        out = np.empty((len(positions), self.base.shape[1]), dtype=self.base.dtype)
        out[inserted] = self.rows[before[inserted]]
        out[~inserted] = self.base[positions[~inserted] - before[~inserted]]
        return out


@dataclass(frozen=True, eq=False)
class PendingIds:
    """Sorted ids ``new`` (none in ``base``) to be merged into the sorted ``base``: a grown
    set's ids, looked up and indexed without the list of every id, which is made (and kept
    here, so that this object goes on naming the same rows) only when something reads it
    whole."""

    base: list[str]
    new: list[str]

    def __len__(self) -> int:
        return len(self.base) + len(self.new)

    def __getitem__(self, position: int) -> str:
        if "listed" in self.__dict__:
            return self.listed[position]
        placed = self._placed
        at = bisect.bisect_left(placed, position)
        if at < len(placed) and placed[at] == position:
            return self.new[at]
        return self.base[position - at]

    @functools.cached_property
    def _placed(self) -> list[int]:
        """Where each new id is in the merged ids."""
        return [bisect.bisect_left(self.base, pid) + n for n, pid in enumerate(self.new)]

    @functools.cached_property
    def listed(self) -> list[str]:
        """The merged ids, as one list (made on first use)."""
        return ids_inserted(self.base, self.new)[0]

    def bisect(self, product_id: str) -> int:
        """Where ``product_id`` would go in the merged ids (``bisect.bisect_left``)."""
        return bisect.bisect_left(self.base, product_id) + bisect.bisect_left(self.new, product_id)

    def position(self, product_id: str) -> int | None:
        at = bisect.bisect_left(self.new, product_id)
        if at < len(self.new) and self.new[at] == product_id:
            return bisect.bisect_left(self.base, product_id) + at
        found = position_in(self.base, product_id)
        return None if found is None else found + at

    def then(self, ids: Sequence[str]) -> PendingIds:
        return PendingIds(self.base, sorted([*self.new, *ids]))


# The ids a set holds: a list, or ids still to be merged (``PendingIds``). The object itself,
# by its identity, names the set's rows (``VectorSet.parent_ids``, ``core.list_ends``).
Ids = list[str] | PendingIds


def position_of(ids: Ids, product_id: str) -> int | None:
    """Where ``product_id`` is in the ids a set holds, or None when it is not there."""
    if isinstance(ids, PendingIds) and "listed" not in ids.__dict__:
        return ids.position(product_id)
    return position_in(ids.listed if isinstance(ids, PendingIds) else ids, product_id)


def position_in(ids: Sequence[str], product_id: str) -> int | None:
    """Where ``product_id`` is in the sorted ``ids``, or None when it is not there."""
    at = bisect.bisect_left(ids, product_id)
    return at if at < len(ids) and ids[at] == product_id else None


def ids_inserted(ids: list[str], new: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sorted ``ids`` with ``new`` (sorted, none already there) inserted, and where each
    went in ``ids`` (as for numpy.insert)."""
    at = [bisect.bisect_left(ids, pid) for pid in new]
    if len(new) <= _INSERTS_MAX:
        merged = list(ids)
        # Right to left, so that earlier positions stay valid; equal positions keep id order.
        for pos, pid in zip(reversed(at), reversed(new), strict=True):
            merged.insert(pos, pid)
    else:
        # Each insert moves the rest of the list: many (a set's ids written after thousands
        # of adds) are merged in one pass instead.
        merged = []
        start = 0
        for pos, pid in zip(at, new, strict=True):
            merged.extend(ids[start:pos])
            merged.append(pid)
            start = pos
        merged.extend(ids[start:])
    return merged, np.array(at, dtype=np.int64)
