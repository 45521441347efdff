"""``GET /metrics``: Prometheus's text format. Request latency by route and responses by
status (every gunicorn worker's, added up through ``PROMETHEUS_MULTIPROC_DIR``, which
`lookalike serve` sets; each process writes its counts once a second, ``_Tally``), then jobs by
kind and state, products, vectors and the broker's queue depth, read when scraped
(``core.metrics``)."""

from __future__ import annotations

import _thread
import bisect
import functools
import logging
import os
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from core import metrics

log = logging.getLogger(__name__)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@functools.cache
def _http() -> tuple[Histogram, Counter]:
    return (
        Histogram(
            "lookalike_http_request_duration_seconds",
            "Seconds from a request's start to its response, by route and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
        ),
        Counter(
            "lookalike_http_responses",
            "Responses, by route, method and status code.",
            ["route", "method", "status"],
        ),
    )


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Any) -> Any:
    started = g.pop("metrics_started", None)
    if started is None:
        return response
    # The route's pattern, not the path: one series per endpoint, whatever the ids.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    _TALLY.add((route, method, response.status_code), time.perf_counter() - started)
    return response


class _Tally:
    """This process's requests since they were last written to prometheus_client's files.

    In multiprocess mode prometheus_client writes every observation to a memory-mapped file
    under a lock, three writes a request: more than the read cache's whole hit
    (bench/perf/read_tail.py's profile). Requests are counted here in plain numbers instead,
    by series and latency bucket, and written once a second by a thread of their own (a
    greenlet under gevent) and before this process answers a scrape: another process's
    requests reach /metrics at most about a second after they were answered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, int], list[Any]] = {}
        self._writer = 0  # the process that started the writing thread

    def add(self, series: tuple[str, str, int], seconds: float) -> None:
        bucket = bisect.bisect_left(_LATENCY_BUCKETS, seconds)  # as Histogram.observe picks
        with self._lock:
            entry = self._pending.get(series)
            if entry is None:
                entry = self._pending[series] = [0, 0.0, [0] * (len(_LATENCY_BUCKETS) + 1)]
            entry[0] += 1
            entry[1] += seconds
            entry[2][bucket] += 1
        if self._writer != os.getpid():
            self._writer = os.getpid()
            _thread.start_new_thread(self._write_every_second, ())

    def write(self) -> None:
        """Everything counted so far into prometheus_client's values."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (route, method, status), (count, total, buckets) in pending.items():
            latency, responses = _series(route, method, status)
            responses.inc(count)
            # A histogram child's own values (prometheus_client has no public way to add many
            # observations at once); tests/test_metrics.py checks the result against observe().
            latency._sum.inc(total)
            for at, observed in enumerate(buckets):
                if observed:
                    latency._buckets[at].inc(observed)

    def _write_every_second(self) -> None:
        while True:
            time.sleep(1)
            try:
                self.write()
            except Exception:  # never let the thread die: the next second tries again
                log.warning("could not write request metrics", exc_info=True)


_TALLY = _Tally()


# A client may send any method name: the ones HTTP defines keep their own series, and every
# other one shares one, so neither the series nor the cache below grow with what clients send.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.cache
def _series(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The labelled children of one route, method and status, looked up once per process
    (``labels()`` takes a lock and builds a key on every call). Routes are the app's own
    patterns, methods a fixed few, statuses three digits, so this stays small."""
    latency, responses = _http()
    return latency.labels(route, method), responses.labels(route, method, str(status))


def _queue_depth() -> dict[str, int]:
    settings = current_app.config["LOOKALIKE"]
    celery = current_app.extensions["celery"]
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        return {settings.queue: int(channel.client.llen(settings.queue))}


def _metrics() -> Response:
    _TALLY.write()  # this process's own requests so far; the others' within a second
    state = CollectorRegistry()
    engine = current_app.extensions["lookalike.engine"]
    state.register(metrics.CatalogueCollector(engine, _queue_depth))
    body = generate_latest(metrics.registry()) + generate_latest(state)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])


def register(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_count)
    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
