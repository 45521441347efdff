"""``GET /metrics``: Prometheus's text format. Request latency by route and responses by
status (every gunicorn worker's, added up through ``PROMETHEUS_MULTIPROC_DIR``, which
`lookalike serve` sets), then jobs by kind and state, products, vectors and the broker's queue
depth, read when scraped (``core.metrics``)."""

from __future__ import annotations

import functools
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
    latency, responses = _series(route, method, response.status_code)
    latency.observe(time.perf_counter() - started)
    responses.inc()
    return response


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
    state = CollectorRegistry()
    engine = current_app.extensions["lookalike.engine"]
    state.register(metrics.CatalogueCollector(engine, _queue_depth))
    body = generate_latest(metrics.registry()) + generate_latest(state)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0])


def register(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_count)
    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
