"""Lookalikes within a group: ``LOOKALIKE_PARTITION`` names metadata columns (``gender``, or
``gender,masterCategory``), and each product's neighbours then come only from the products that
share its values of every one of them.

The grouping is part of the space the lists are built in (``core.spaces.Space.partition``), so
it is stored with every list, a change of setting moves every list to the new space (the next
job, or ``lookalike index --stored``, rebuilds them), and a reader can say which grouping a list
was built with. A product without one of the columns is grouped with the others that lack it.
Values are compared as text: the number 2012 and the text "2012" are one group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Product

# A column name holds neither: they separate the columns in a space's text form.
FORBIDDEN = (",", "|")

Key = tuple[str | None, ...]


def parse_columns(raw: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"gender, masterCategory"`` (or a list of names) as a tuple of column names.

    Raises:
        ValueError: a name is empty, repeated or holds a separator.
    """
    if raw is None:
        return ()
    names = [part.strip() for part in raw.split(",")] if isinstance(raw, str) else list(raw)
    if names == [""]:
        return ()
    for name in names:
        if not name or any(mark in name for mark in FORBIDDEN):
            raise ValueError(f"partition column {name!r} must be a non-empty name without , or |")
    if len(set(names)) != len(names):
        raise ValueError(f"partition columns repeat a name: {', '.join(names)}")
    return tuple(names)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):  # JSON's true, whichever database read it
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def key_of(meta: Mapping[str, Any] | None, columns: Sequence[str]) -> Key:
    """A product's group: its values of ``columns`` as text (None where it has none)."""
    meta = meta or {}
    return tuple(_text(meta.get(column)) for column in columns)


def group_numbers(session: Session, ids: Sequence[str], columns: Sequence[str]) -> np.ndarray:
    """A group number per id of ``ids`` (equal numbers: equal values of every column)."""
    values = [Product.meta[column] for column in columns]
    keys: dict[str, Key] = {}
    for row in session.execute(select(Product.id, *values)):
        keys[row[0]] = tuple(_text(value) for value in row[1:])
    numbers: dict[Key, int] = {}
    missing = (None,) * len(columns)
    return np.fromiter(
        (numbers.setdefault(keys.get(pid, missing), len(numbers)) for pid in ids),
        dtype=np.int64,
        count=len(ids),
    )


def described(columns: Sequence[str], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a response says of a list's grouping: the columns, and the product's group."""
    return {"by": list(columns), "group": dict(zip(columns, key_of(meta, columns), strict=True))}


def moved(
    session: Session, columns: Sequence[str], former: Mapping[str, Mapping[str, Any] | None]
) -> list[str]:
    """Of the products whose former metadata is ``former`` (id to metadata), those now in
    another group: their lists, and their places in others, must be worked out again."""
    if not columns or not former:
        return []
    query = select(Product.id, Product.meta).where(Product.id.in_(list(former)))
    now: dict[str, Any] = {pid: meta for pid, meta in session.execute(query)}
    return sorted(
        pid
        for pid, meta in former.items()
        if pid in now and key_of(now[pid], columns) != key_of(meta, columns)
    )
