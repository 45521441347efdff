"""Responses kept in memory by the process that serves them, never older than a bound.

The storefront asks for the same lists again and again, and a list changes only when a write
commits. Each process keeps what it rendered (the bytes of a response), up to a number of
entries, least recently used first out, shared by its threads or greenlets. At most every
``max_age`` seconds a request first reads the change counters that the database's triggers move
in the same transaction as every write to a list (``neighbours``) and every metadata change,
delete, insert or photo change of a product (``products``, migrations 0006 and 0007: a new
product may be a twin that its group's lookalikes name); when either moved, everything kept is
dropped. So a read that starts ``max_age`` seconds or more after a write committed, in any
process, never returns what the write replaced.

A response rendered while the counters were being checked is not kept if the check dropped
what was kept: it may have been read before the write it would then outlive.

The check is made early, in the background: once half of ``max_age`` has passed, the next
request starts a thread (a greenlet under gevent) that reads the counters, and goes on with what
is kept, so no request waits for the database on the hit path. Only a request that finds the
whole ``max_age`` passed with no check landed (the database slow, or the process idle) reads
them itself before it answers: the bound holds either way.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from sqlalchemy import Engine, literal_column, or_, select

from core.db import DriverStatement
from core.models import ChangeCounter
from core.neighbour_table import NEIGHBOURS_COUNTER

log = logging.getLogger(__name__)

PRODUCTS_COUNTER = "products"
COUNTERS = (NEIGHBOURS_COUNTER, PRODUCTS_COUNTER)
# The names written into the statement: the driver gets it with no parameters to pass.
_COUNTERS = (
    select(ChangeCounter.name, ChangeCounter.value)
    .where(or_(*(ChangeCounter.name == literal_column(f"'{name}'") for name in COUNTERS)))
    .order_by(ChangeCounter.name)
)


class ReadCache:
    """``get(key, render)``: the kept bytes for ``key``, or ``render()``'s, kept."""

    def __init__(self, engine: Engine, entries: int, max_age: float) -> None:
        self.entries = entries
        self.max_age = max_age
        self._counters = DriverStatement(engine, _COUNTERS)
        self._kept: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._seen: tuple[tuple[str, int], ...] | None = None
        self._checked = float("-inf")  # when the last check that landed began
        self._generation = 0  # moved each time everything kept is dropped
        self._refreshing = False

    def get(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        if self.entries <= 0:
            return render()
        self._check()
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
            generation = self._generation
        body = render()
        with self._lock:
            if generation == self._generation:
                self._kept[key] = body
                if len(self._kept) > self.entries:
                    self._kept.popitem(last=False)
        return body

    def _check(self) -> None:
        """Past half of ``max_age`` since the last check began, start one in the background;
        past all of it, check before answering."""
        age = time.monotonic() - self._checked
        if age < self.max_age / 2:
            return
        if age < self.max_age:
            with self._lock:
                if self._refreshing:
                    return
                self._refreshing = True
            # Not threading.Thread: its start() waits until the thread runs, and under gevent
            # that wait lets every ready greenlet run first, so the request that started the
            # check would be the slow one. The low-level start returns at once (gevent patches
            # it to spawn a greenlet).
            _thread.start_new_thread(self._refresh_behind, ())
            return
        self._refresh()

    def _refresh_behind(self) -> None:
        try:
            self._refresh()
        except Exception:  # the next request past the bound checks itself, and says why
            log.warning("read cache: the background check of the counters failed", exc_info=True)
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        """Read the counters (holding no lock: requests go on meanwhile); drop what is kept
        if they moved."""
        # The bound runs from before the read: every commit it sees is at least this old.
        started = time.monotonic()
        seen = tuple((name, int(value)) for name, value in self._counters.rows())
        with self._lock:
            if started <= self._checked:
                return  # a check that began later has landed already
            if seen != self._seen:
                self._kept.clear()
                self._generation += 1
                self._seen = seen
            self._checked = started

    def __len__(self) -> int:
        return len(self._kept)
