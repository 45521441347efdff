"""gunicorn config for bench/perf/read_tail.py: `lookalike serve`'s own hooks
(``cli.gunicorn_config``), and each worker's app wrapped by ``Tracer``, which writes one JSON
line per request to ``$LOOKALIKE_TRACE_DIR/<pid>.jsonl``:

- ``id``: the request's ``X-Request-ID`` (the bench's client sends its sequence number);
- ``t0``, ``t1``: CLOCK_MONOTONIC (``time.perf_counter``, the client's clock too) when the app
  was called and when its body was complete;
- ``cpu``: the thread's CPU seconds in between; ``wait0``, ``wait1``: the thread's time spent
  runnable but not running (``/proc/thread-self/schedstat``), so a process the kernel left
  waiting for a core shows as a difference;
- ``gc``, ``gc_full``: seconds in the garbage collector in between, and full (gen 2) passes;
- ``db``, ``db_calls``: seconds in the list reads of the read cache's misses, and how many;
  ``check``, ``checks``: the same for its check of the change counters (both through
  ``core.db.DriverStatement``, the read path's only database calls; pool checkout included).

Under gevent a request on the read cache's hit path never yields, so the figures of a request
are its own; one that waits on the database lets others run meanwhile, and their time shows
in its ``t1 - t0`` but not in its ``cpu``.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import greenlet

from cli import gunicorn_config as serve_config

access_log_format = serve_config.access_log_format
on_starting = serve_config.on_starting
child_exit = serve_config.child_exit


# The greenlet running now (the tracer runs under gunicorn's gevent workers, and gevent brings
# greenlet): each request's database time is kept by it.
_current = greenlet.getcurrent


class Tracer:
    def __init__(self, app: Callable[..., Iterable[bytes]], path: Path) -> None:
        self.app = app
        self.out = path.open("a", buffering=1 << 20)
        self.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self.gc_seconds = 0.0
        self.gc_full = 0
        self._gc_started = 0.0
        self.db: dict[tuple[object, bool], tuple[float, int]] = {}
        gc.callbacks.append(self._gc)
        self._wrap_statements()

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_started
            self.gc_full += info["generation"] == 2

    def _wrap_statements(self) -> None:
        from core.db import DriverStatement

        rows = DriverStatement.rows
        db = self.db

        def timed(statement: DriverStatement, **params: Any) -> list[Any]:
            started = time.perf_counter()
            try:
                return rows(statement, **params)
            finally:
                # The read cache's check of the change counters, or a list read (a miss).
                key = (_current(), "change_counters" in statement.sql)
                seconds, calls = db.get(key, (0.0, 0))
                db[key] = (seconds + time.perf_counter() - started, calls + 1)

        DriverStatement.rows = timed  # type: ignore[method-assign,assignment]

    def _waited(self) -> float:
        return int(os.pread(self.schedstat, 100, 0).split()[1]) / 1e9

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        me = _current()
        for counters in (False, True):
            self.db[(me, counters)] = (0.0, 0)
        gc0, full0 = self.gc_seconds, self.gc_full
        wait0, cpu0, t0 = self._waited(), time.thread_time(), time.perf_counter()
        result = self.app(environ, start_response)
        try:
            body = list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        t1, cpu1, wait1 = time.perf_counter(), time.thread_time(), self._waited()
        db, calls = self.db.pop((me, False), (0.0, 0))
        check, checks = self.db.pop((me, True), (0.0, 0))
        record = {
            "id": environ.get("HTTP_X_REQUEST_ID", ""),
            "t0": t0,
            "t1": t1,
            "cpu": cpu1 - cpu0,
            "wait0": wait0,
            "wait1": wait1,
            "gc": self.gc_seconds - gc0,
            "gc_full": self.gc_full - full0,
            "db": db,
            "db_calls": calls,
            "check": check,
            "checks": checks,
        }
        self.out.write(json.dumps(record) + "\n")
        return body

    def close(self) -> None:
        self.out.close()


def post_worker_init(worker: Any) -> None:
    serve_config.post_worker_init(worker)
    folder = Path(os.environ["LOOKALIKE_TRACE_DIR"])
    worker.wsgi = Tracer(worker.wsgi, folder / f"{os.getpid()}.jsonl")


def worker_exit(server: Any, worker: Any) -> None:
    if isinstance(worker.wsgi, Tracer):
        worker.wsgi.close()
