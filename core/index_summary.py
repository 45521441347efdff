"""What an index job did, as its result records it and the command line reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Job, JobChunk
from core.products import ProductSync, pending_products
from core.spaces import Space


@dataclass(frozen=True)
class IndexSummary:
    """What an index job did, as its result records it."""

    job_id: str
    products: ProductSync
    embedded: int
    failed: int
    skipped: int
    lists_written: int
    space_id: str
    # An approximate build's lowest sampled recall@k (core.approximate); None: exact.
    recall: float | None = None

    @property
    def search(self) -> str:
        """How the build searched, in words."""
        if self.recall is None:
            return "exact"
        return f"approximate, recall {self.recall:.3f} on a sample"

    def as_result(self) -> dict[str, Any]:
        # "model_id" is the API's name for the space the lists were built in.
        search: dict[str, Any] = {"mode": "exact" if self.recall is None else "approximate"}
        if self.recall is not None:
            search["sampled_recall"] = round(self.recall, 4)
        return {
            "model_id": self.space_id,
            "products_added": self.products.added,
            "products_changed": self.products.changed,
            "products_unchanged": self.products.unchanged,
            "embedded": self.embedded,
            "failed": self.failed,
            "skipped": self.skipped,
            "lists_written": self.lists_written,
            "neighbour_search": search,
        }

    @classmethod
    def of(cls, job: Job) -> IndexSummary:
        """The summary of a finished index job."""
        result = job.result or {}
        products = ProductSync(
            result.get("products_added", 0),
            result.get("products_changed", 0),
            result.get("products_unchanged", 0),
        )
        return cls(
            job.id,
            products,
            result.get("embedded", 0),
            result.get("failed", 0),
            result.get("skipped", 0),
            result.get("lists_written", 0),
            result.get("model_id", ""),
            result.get("neighbour_search", {}).get("sampled_recall"),
        )


def index_summary(
    session: Session,
    job: Job,
    embedding_model_id: str,
    space: Space,
    written: int,
    recall: float | None = None,
) -> IndexSummary:
    chunks = session.execute(
        select(JobChunk.product_ids, JobChunk.skipped).where(JobChunk.job_id == job.id)
    ).all()
    ids = [pid for product_ids, _ in chunks for pid in product_ids]
    skipped = sum(count for _, count in chunks)
    failed = len(pending_products(session, embedding_model_id, ids))
    products = ProductSync(**job.params.get("products", {}))
    return IndexSummary(
        job.id, products, len(ids) - failed - skipped, failed, skipped, written, space.id, recall
    )
