"""Where each stored list of a space ends: the score a newcomer must come close to in order to
enter it. An add reads, merges and writes only the lists some newcomer may enter, so it needs
every list's last score; a worker keeps them between tasks (``core.space_cache``) and brings
them up to date through the log of list writes (``core.neighbour_table.log_list_writes``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import IN_CHUNK, read_rows
from core.models import ListWrite, Neighbour
from core.pending import Ids, PendingIds, position_of
from core.spaces import Space
from core.vectors import VectorSet


@dataclass(frozen=True)
class ListEnds:
    """The products that have a list in a space, each with its list's last score: what a newcomer
    must come close to to enter it (-inf when the list is shorter than k: anyone enters).

    Kept as arrays along rows named by ``ids`` (what a set holds, its list or its pending ids,
    so that an add does not look up every product; not the set, so that its vectors are not
    kept alive by these), plus ``elsewhere``, the lists of products with no row there.
    :meth:`along` moves them onto another set of rows: cheaply onto one grown from theirs, by
    a look-up per product otherwise.
    """

    k: int
    ids: Ids | None
    listed: np.ndarray  # bool per row of ``ids``
    floors: np.ndarray  # float32 per row: -inf when the list is short or there is none
    elsewhere: Mapping[str, float]
    counter: int | None = None

    @classmethod
    def of(cls, k: int, floors: Mapping[str, float], counter: int | None = None) -> ListEnds:
        empty = np.zeros(0, dtype=bool)
        return cls(k, None, empty, empty.astype(np.float32), floors, counter)

    def along(self, vectors: VectorSet) -> ListEnds:
        """The same ends along the rows of ``vectors``."""
        if vectors.held_ids is self.ids:
            return self
        at = vectors.inserted_at
        if self.ids is not None and at is not None and vectors.parent_ids is self.ids:
            listed = np.insert(self.listed, at, False)
            floors = np.insert(self.floors, at, np.float32(-np.inf))
            return replace(
                self, ids=vectors.held_ids, listed=listed, floors=floors, elsewhere={}
            )._with(self.elsewhere, ())
        every = self.as_dict()
        get = every.get
        scores = np.fromiter(map(get, vectors.ids, itertools.repeat(np.nan)), np.float64)
        listed = ~np.isnan(scores)
        scores[~listed] = -np.inf
        elsewhere: dict[str, float] = {}
        if int(listed.sum()) != len(every):
            elsewhere = {pid: every[pid] for pid in every.keys() - set(vectors.ids)}
        return replace(
            self,
            ids=vectors.held_ids,
            listed=listed,
            floors=scores.astype(np.float32),
            elsewhere=elsewhere,
        )

    def as_dict(self) -> dict[str, float]:
        every = dict(self.elsewhere)
        if self.ids is not None:
            rows = np.flatnonzero(self.listed)
            ids = self.ids.listed if isinstance(self.ids, PendingIds) else self.ids
            every.update(zip([ids[row] for row in rows], self.floors[rows].tolist(), strict=True))
        return every

    def written(self, floors: Mapping[str, float], removed: Iterable[str]) -> ListEnds:
        """After lists were rewritten (``floors``, their new last scores) or removed."""
        return replace(self, listed=self.listed.copy(), floors=self.floors.copy())._with(
            floors, removed
        )

    def _with(self, floors: Mapping[str, float], removed: Iterable[str]) -> ListEnds:
        # Only on arrays this object owns (fresh copies).
        elsewhere = dict(self.elsewhere)
        ids: Ids = [] if self.ids is None else self.ids
        for pid in removed:
            at = position_of(ids, pid)
            if at is None:
                elsewhere.pop(pid, None)
            else:
                self.listed[at] = False
                self.floors[at] = -np.inf
        for pid, floor in floors.items():
            at = position_of(ids, pid)
            if at is None:
                elsewhere[pid] = floor
            else:
                self.listed[at] = True
                self.floors[at] = floor
        return replace(self, elsewhere=elsewhere)


def read_list_ends(session: Session, space: Space, k: int, counter: int | None = None) -> ListEnds:
    """The list ends of ``space`` as stored."""
    query = select(Neighbour.product_id, Neighbour.rank, Neighbour.score).where(
        Neighbour.space_id == space.id, Neighbour.rank.in_(sorted({1, k}))
    )
    return ListEnds.of(k, _floors(read_rows(session, query), k), counter)


def _floors(rows: Iterable[Any], k: int) -> dict[str, float]:
    floors: dict[str, float] = {}
    for pid, rank, score in rows:
        if rank == k:
            floors[pid] = float(np.float32(score))
        else:
            floors.setdefault(pid, -np.inf)
    return floors


def follow_list_writes(
    session: Session, space: Space, known: ListEnds, counter: int | None
) -> ListEnds | None:
    """``known`` brought to ``counter`` through the log of list writes, or None on a gap."""
    if known.counter is None or counter is None or counter < known.counter:
        return None
    writes = session.execute(
        select(ListWrite.counter, ListWrite.previous, ListWrite.product_ids)
        .where(ListWrite.counter > known.counter, ListWrite.counter <= counter)
        .order_by(ListWrite.counter)
    ).all()
    at = known.counter
    for after, previous, _ in writes:
        if previous != at:
            return None
        at = after
    if at != counter:
        return None
    ids = sorted({pid for write in writes for pid in write[2]})
    floors: dict[str, float] = {}
    for start in range(0, len(ids), IN_CHUNK):
        query = select(Neighbour.product_id, Neighbour.rank, Neighbour.score).where(
            Neighbour.space_id == space.id,
            Neighbour.rank.in_(sorted({1, known.k})),
            Neighbour.product_id.in_(ids[start : start + IN_CHUNK]),
        )
        floors.update(_floors(session.execute(query), known.k))
    return replace(
        known.written(floors, [pid for pid in ids if pid not in floors]), counter=counter
    )
