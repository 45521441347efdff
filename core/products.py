"""Products: the catalogue as registered (sync from a folder, the ones still waiting for a
vector) and the vectors stored for them.

Functions here take a ``Session`` and never commit: the caller commits after each embedded
batch, so that an interrupted run keeps its progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session

from core import metrics, projected
from core.catalogue import CatalogueItem, content_hash
from core.db import in_chunks, upsert
from core.encoder import ImageEncoder
from core.jobs import record_failures
from core.models import Embedding, Product
from core.pipeline import EmbeddedBatch, embed_images


@dataclass
class ProductSync:
    """How a sync changed the registered products."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"added": self.added, "changed": self.changed, "unchanged": self.unchanged}


def sync_products(session: Session, items: Sequence[CatalogueItem]) -> ProductSync:
    """Insert new products, update changed ones. A product whose photo changed loses its
    vectors, so it is embedded again."""
    result = ProductSync()
    stale: list[str] = []
    for chunk in in_chunks(items):
        known = {
            p.id: p
            for p in session.scalars(
                select(Product).where(Product.id.in_([item.product_id for item in chunk]))
            )
        }
        for item in chunk:
            product = known.get(item.product_id)
            try:
                digest = content_hash(item.path)
            except OSError:
                if product is None:
                    raise
                # A stored photo that vanished: embedding it reports the error against it.
                result.unchanged += 1
                continue
            if product is None:
                result.added += 1
                session.add(
                    Product(
                        id=item.product_id,
                        meta=item.meta,
                        image_path=str(item.path),
                        content_hash=digest,
                    )
                )
                continue
            if (product.content_hash, product.image_path, product.meta) == (
                digest,
                str(item.path),
                item.meta,
            ):
                result.unchanged += 1
                continue
            result.changed += 1
            if product.content_hash != digest:
                stale.append(item.product_id)
            product.meta = item.meta
            product.image_path = str(item.path)
            product.content_hash = digest
    for stale_ids in in_chunks(stale):
        session.execute(delete(Embedding).where(Embedding.product_id.in_(stale_ids)))
    session.flush()
    return result


def stored_items(session: Session) -> list[CatalogueItem]:
    """The registered products as catalogue items, to index them again where they are."""
    return [
        CatalogueItem(product.id, Path(product.image_path), dict(product.meta or {}))
        for product in session.scalars(select(Product).order_by(Product.id))
    ]


# Above this many ids, pending_products reads the whole catalogue's pending products once.
_WHOLE_CATALOGUE = 5_000


def pending_products(
    session: Session, embedding_model_id: str, product_ids: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(id, image path) of products with no vector of their current photo under
    ``embedding_model_id`` (of ``product_ids`` only, when given)."""
    embedded = select(Embedding.product_id).where(
        and_(
            Embedding.product_id == Product.id,
            Embedding.model_id == embedding_model_id,
            Embedding.content_hash == Product.content_hash,
        )
    )
    query = select(Product.id, Product.image_path).where(~embedded.exists())
    if product_ids is None:
        return sorted((pid, path) for pid, path in session.execute(query))
    wanted = set(product_ids)
    if len(wanted) > _WHOLE_CATALOGUE:
        # Many ids (an index job's summary): one anti-join over the catalogue, then kept to
        # those asked for, is far cheaper than hundreds of chunked lookups (39 s at 200k).
        return sorted((pid, path) for pid, path in session.execute(query) if pid in wanted)
    found: list[tuple[str, str]] = []
    for chunk in in_chunks(sorted(wanted)):
        found.extend(session.execute(query.where(Product.id.in_(chunk))))
    return sorted(found)


def store_batch(
    session: Session, embedding_model_id: str, batch: EmbeddedBatch, job_id: str | None
) -> None:
    """Upsert a batch's vectors (keyed by product and model id) and record its failures."""
    if batch.product_ids:
        # Vectors embedded again: their projected rows were of the vectors they replace.
        projected.drop(session, batch.product_ids)
        hashes = dict(
            session.execute(
                select(Product.id, Product.content_hash).where(Product.id.in_(batch.product_ids))
            ).all()
        )
        upsert(
            session,
            Embedding.__table__,
            [
                {
                    "product_id": pid,
                    "model_id": embedding_model_id,
                    "content_hash": hashes[pid],
                    "dim": int(vector.shape[0]),
                    "vector": np.asarray(vector, dtype="<f4").tobytes(),
                }
                for pid, vector in zip(batch.product_ids, batch.vectors, strict=True)
            ],
            keys=["product_id", "model_id"],
        )
    record_failures(session, job_id, batch.failures)


def photo_paths(session: Session, product_ids: Sequence[str]) -> dict[str, str]:
    """Each of ``product_ids``' current photo path (products that are gone are left out)."""
    paths: dict[str, str] = {}
    for chunk in in_chunks(list(product_ids)):
        query = select(Product.id, Product.image_path).where(Product.id.in_(chunk))
        paths.update((str(pid), str(path)) for pid, path in session.execute(query))
    return paths


def embed_pending(
    session: Session,
    encoder: ImageEncoder,
    items: Sequence[tuple[str, str]],
    batch_size: int,
    workers: int,
    job_id: str | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed ``items`` and store each batch; yields after each batch so the caller can commit."""
    counted = metrics.work()
    for batch in embed_images(encoder, items, batch_size, workers):
        store_batch(session, encoder.model_id, batch, job_id)
        counted.photos_embedded.inc(len(batch.product_ids))
        counted.photos_failed.inc(len(batch.failures))
        yield batch
