"""Prometheus metrics (prometheus_client) of the work itself: photos embedded and the seconds
the model took, job steps by outcome; and, read from SQL and the broker when scraped, jobs by
kind and state, products, vectors and the queue's depth.

The counters are made on first use, not at import, so that a process that serves several
(gunicorn's workers, Celery's pool) can set ``PROMETHEUS_MULTIPROC_DIR`` first: then every
process writes its values there and one endpoint adds them up (``registry``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import Engine, func, select

from core.models import Embedding, Job, Product

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class WorkMetrics:
    photos_embedded: Counter
    photos_failed: Counter
    embedding_seconds: Histogram
    job_steps: Counter
    job_step_seconds: Histogram


@functools.cache
def work() -> WorkMetrics:
    """The process's work metrics, made on first use."""
    return WorkMetrics(
        Counter("lookalike_photos_embedded", "Photos turned into vectors."),
        Counter("lookalike_photos_failed", "Photos that could not be decoded or embedded."),
        Histogram(
            "lookalike_embedding_seconds",
            "Seconds the model took for one batch of photos.",
            buckets=_BATCH_BUCKETS,
        ),
        Counter("lookalike_job_steps", "Job steps run, by step and outcome.", ["step", "outcome"]),
        Histogram(
            "lookalike_job_step_seconds",
            "Seconds one job step took, by step.",
            ["step"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
        ),
    )


def registry() -> CollectorRegistry:
    """What this process's metrics endpoint answers: every process's values when
    ``PROMETHEUS_MULTIPROC_DIR`` is set, else this process's own."""
    if os.environ.get(MULTIPROCESS_ENV):
        found = CollectorRegistry()
        multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
        return found
    return REGISTRY


class CatalogueCollector(Collector):
    """Jobs by kind and state, products, vectors by model and the queue's depth, read when
    scraped (gauges: they come from the shared state, not from one process)."""

    def __init__(self, engine: Engine, queue_depth: Any = None) -> None:
        self.engine = engine
        self.queue_depth = queue_depth  # () -> {queue: messages}, or None

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "lookalike_jobs", "Jobs, by kind and state.", labels=["kind", "state"]
        )
        products = GaugeMetricFamily("lookalike_products", "Products in the catalogue.")
        vectors = GaugeMetricFamily(
            "lookalike_vectors", "Stored vectors, by embedding model.", labels=["model"]
        )
        with self.engine.connect() as connection:
            for kind, state, count in connection.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ):
                jobs.add_metric([kind, state], count)
            products.add_metric(
                [], connection.scalar(select(func.count()).select_from(Product)) or 0
            )
            for model, count in connection.execute(
                select(Embedding.model_id, func.count()).group_by(Embedding.model_id)
            ):
                vectors.add_metric([model], count)
        yield from (jobs, products, vectors)
        if self.queue_depth is not None:
            depth = GaugeMetricFamily(
                "lookalike_queue_messages",
                "Job steps waiting in the broker's queue, by queue.",
                labels=["queue"],
            )
            for queue, count in self.queue_depth().items():
                depth.add_metric([queue], count)
            yield depth
