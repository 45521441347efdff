"""Products filed with the very same photo (equal file contents) are one photo, not lookalikes.

Two products whose photos are the same file score 1.0 against each other and would fill each
other's first places, and every list near them would hold both. So in every space only the
first of such a group (in product id order, among those with a vector) has a vector: the
others, its *twins*, take no place in any list, and each is shown its group's list (which is
exactly its own, the photo being the same) with the group named apart as "same photo as".
Which member stands for the group follows the vectors: when it is deleted or its photo
replaced, the next one takes its place at the next update.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import PhotoCount, Product
from core.pending import Ids
from core.vectors import VectorSet


def photo_groups(session: Session) -> list[list[str]]:
    """Every group of two or more products with the same photo, each sorted, by first id.

    Read through the photos counted as shared (``PhotoCount``, kept by triggers, indexed on
    the shared ones), so the cost follows the twins, not the catalogue."""
    shared = (
        select(Product.id, Product.content_hash)
        .join(PhotoCount, PhotoCount.content_hash == Product.content_hash)
        .where(PhotoCount.products > 1)
    )
    groups: dict[str, list[str]] = defaultdict(list)
    for product_id, digest in session.execute(shared):
        groups[digest].append(product_id)
    return sorted(sorted(ids) for ids in groups.values())


def twins_of(session: Session, product_id: str) -> list[str]:
    """The other products with ``product_id``'s photo, in id order."""
    own = select(Product.content_hash).where(Product.id == product_id).scalar_subquery()
    found = session.scalars(
        select(Product.id).where(Product.content_hash == own, Product.id != product_id)
    )
    return sorted(found)


def visible(
    session: Session, vectors: VectorSet, groups: np.ndarray | None = None
) -> tuple[VectorSet, list[str], np.ndarray | None]:
    """``vectors`` without the twins (all but the first of each same-photo group among its
    ids), the ids left out, and ``groups`` (a lookalike group per row, ``core.partition``)
    along the rows kept. With ``groups``, products with the same photo in two lookalike groups
    are twins only within each: each group keeps its first."""
    hidden: list[str] = []
    # A look-up per twin, not a set of every id: the groups are few, the rows up to millions.
    for group in photo_groups(session):
        found = [(pid, vectors.position(pid)) for pid in group]
        members = [(pid, at) for pid, at in found if at is not None]
        if groups is None:
            hidden.extend(pid for pid, _ in members[1:])
            continue
        seen: set[int] = set()
        for pid, at in members:
            number = int(groups[at])
            if number in seen:
                hidden.append(pid)
            seen.add(number)
    if not hidden:
        return vectors, [], groups
    hidden.sort()
    kept_groups = None
    if groups is not None:
        keep = np.ones(len(vectors.ids), dtype=bool)
        keep[vectors.positions(hidden)] = False
        kept_groups = groups[keep]
    return _without_twins(vectors, hidden), hidden, kept_groups


# The set without twins of each vector set still alive (a process keeps one or two: its
# cache's), by the identity of the ids that set holds, so that a set an add grew by a few rows
# has its own grown by the same rows (not rebuilt from every id) and list ends kept along the
# one before follow it (``core.list_ends.ListEnds.along``) without a look-up per id. The set
# with twins then holds no array of its own: it is held as the set without twins and the
# twins' rows (``VectorSet.hold_as``), and an add neither writes its array nor makes its list
# of ids (``core.vectors.VectorSet``). The one before is let go first: at a million rows each
# is a 256 MB array.
_VISIBLE: dict[int, tuple[weakref.ref[VectorSet], tuple[str, ...], VectorSet]] = {}


def _without_twins(vectors: VectorSet, hidden: list[str]) -> VectorSet:
    key = tuple(hidden)
    known = _kept(vectors.held_ids)
    if known is not None and known[0]() is vectors and known[1] == key:
        return known[2]
    del known  # nothing here may keep an old set without twins alive
    found = _grown(vectors, key)
    if found is None:
        # The sets without twins of other sets go first (the cached one's, when a delete
        # shrank it): kept, each would be a fourth 256 MB array beside this one at a million.
        _VISIBLE.clear()
        found = vectors.without(hidden)
    # The set with twins becomes this one and the twins' rows: no second array of every row.
    vectors.hold_as(found, vectors.positions(hidden))
    address = id(vectors.held_ids)
    _VISIBLE[address] = (weakref.ref(vectors, lambda _: _VISIBLE.pop(address, None)), key, found)
    return found


def _kept(ids: Ids) -> tuple[weakref.ref[VectorSet], tuple[str, ...], VectorSet] | None:
    """What ``_VISIBLE`` holds for the set that holds ``ids`` (that very object), if alive."""
    known = _VISIBLE.get(id(ids))
    owner = known[0]() if known is not None else None
    return known if owner is not None and owner.held_ids is ids else None


def _grown(vectors: VectorSet, key: tuple[str, ...]) -> VectorSet | None:
    """The set without twins of the set ``vectors`` grew from, grown by the same rows (and that
    one dropped); None when there is none kept, or the twins differ."""
    parent, new, rows = vectors.parent_ids, vectors.added_ids, vectors.added
    known = _kept(parent) if parent is not None else None
    if known is None or known[1] != key or new is None or rows is None or set(new) & set(key):
        return None
    before = known[2]
    del known
    _VISIBLE.pop(id(parent))
    # The same rows into the set without twins: neither the grown set's array nor its list of
    # ids is ever made (``core.vectors.VectorSet``).
    return before.with_rows(new, rows)
