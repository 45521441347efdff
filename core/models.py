"""SQLAlchemy models: products, their vectors, their neighbour lists, jobs and image errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PRODUCT_ID_LENGTH = 128
MODEL_ID_LENGTH = 255


# Digit runs padded to this many digits in a product's sort key: numbers up to 10^20 sort as
# numbers ("2" before "10"), whatever letters surround them.
_DIGITS = 20
_DIGIT_RUN = re.compile(r"\d+")


def natural_key(product_id: str) -> str:
    """The key products are listed by: the id with every run of digits left-padded with zeros,
    so that ``p2`` comes before ``p10`` and ``1855`` before ``10000``."""
    return _DIGIT_RUN.sub(lambda run: run[0].zfill(_DIGITS), product_id)


def search_text_of(meta: dict[str, Any] | None) -> str:
    """What a name search looks in: every text or number value of the metadata (the name,
    type, colour...), case-folded, one space apart. Keys are left out: a search for "gender"
    should not find every product."""
    values = (meta or {}).values()
    shown = (str(v) for v in values if isinstance(v, str | int | float) and not isinstance(v, bool))
    # NUL separates words too: PostgreSQL's text cannot hold it (rows stored before the checks).
    return " ".join(" ".join(shown).replace("\x00", " ").casefold().split())


def _sort_key_default(context: Any) -> str:
    return natural_key(context.get_current_parameters()["id"])


def _search_text_default(context: Any) -> str:
    return search_text_of(context.get_current_parameters().get("meta"))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Product(Base):
    """One catalogue item and its photo."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(PRODUCT_ID_LENGTH), primary_key=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    image_path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    # Set from the id on insert (ids never change): the catalogue's listing order.
    sort_key: Mapped[str] = mapped_column(Text, default=_sort_key_default, server_default="")
    # search_text_of(meta): set on every insert, ORM or Core (the default), and on every ORM
    # update (the listener below); searched through a trigram index on PostgreSQL and an FTS5
    # trigram table on SQLite (migration 0009).
    search_text: Mapped[str] = mapped_column(Text, default=_search_text_default, server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    # Products filed with the same photo are found by it (core.twins).
    __table_args__ = (
        Index("ix_products_content_hash", "content_hash"),
        Index("ix_products_sort_key", "sort_key"),
    )

    @property
    def name(self) -> str | None:
        value = self.meta.get("productDisplayName") if self.meta else None
        return str(value) if value is not None else None


class Embedding(Base):
    """A product's vector under one model id. Vectors of different ids are never compared."""

    __tablename__ = "embeddings"

    product_id: Mapped[str] = mapped_column(
        ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # created_at too: a process cache looks for rows created since its last check.
    __table_args__ = (Index("ix_embeddings_model_id_created_at", "model_id", "created_at"),)


class Neighbour(Base):
    """One rank of a product's top-k list. A storefront reads these rows with plain SQL."""

    __tablename__ = "neighbours"

    # Products' ids without foreign keys: a key checked and locked the product's row for each
    # list row written, two thirds of a build's writing. A trigger on products (migration 0016)
    # deletes a deleted product's list and its places in other lists, as the cascades did.
    product_id: Mapped[str] = mapped_column(String(PRODUCT_ID_LENGTH), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    neighbour_id: Mapped[str] = mapped_column(String(PRODUCT_ID_LENGTH))
    score: Mapped[float] = mapped_column(Float)
    # The space the list was built in (``core.spaces.Space.id``): an embedding model's id, with
    # the catalogue's projection when there is one.
    space_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH))

    __table_args__ = (Index("ix_neighbours_neighbour_id", "neighbour_id"),)


class Job(Base):
    """A unit of work (index a catalogue, add products, search...) and its progress.

    ``kind`` and ``state`` hold the values of ``core.jobs.JobKind`` and ``core.jobs.JobState``.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_jobs_created_at", "created_at"),)


class ProjectionRecord(Base):
    """A projection (PCA whitening) fitted on one model's vectors of this catalogue.

    Lists built with it carry ``<embedding model id>|<tag>`` as their space id
    (``core.spaces.Space``).
    """

    __tablename__ = "projections"

    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    embedding_model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH))
    dims: Mapped[int] = mapped_column(Integer)
    whiten: Mapped[float] = mapped_column(Float)
    power: Mapped[float] = mapped_column(Float)
    # What was asked: the stored projection may hold fewer (a small catalogue), or none.
    source_dims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fitted_on: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_projections_embedding_model_id", "embedding_model_id"),)


class PhotoCount(Base):
    """How many products have each photo (content hash), kept by the database's triggers
    (migration 0013): the shared ones, indexed, are what ``core.twins`` reads."""

    __tablename__ = "photo_counts"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    products: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index(
            "ix_photo_counts_shared",
            "content_hash",
            postgresql_where=text("products > 1"),
            sqlite_where=text("products > 1"),
        ),
    )


class ProjectedVector(Base):
    """A product's vector through a stored projection (``core.projected``): what processes read
    instead of the embeddings, which are many times larger (1024-d against 64-d by default).
    Valid while its content hash is that of the product's embedding under the projection's
    model; a vector embedded again drops its projected rows (``core.products.store_batch``)."""

    __tablename__ = "projected_vectors"

    # Product first: a product's rows (a delete's cascade, a vector embedded again) are found
    # through the key.
    product_id: Mapped[str] = mapped_column(
        ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(
        ForeignKey("projections.tag", ondelete="CASCADE"), primary_key=True
    )
    content_hash: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class JobChunk(Base):
    """One slice of an index job's products, run as one task; its progress is set, never
    incremented, so a chunk that runs twice counts once."""

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_ids: Mapped[list[str]] = mapped_column(JSON)
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    # Photos that already had a vector under the worker's model when the chunk ran.
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    state: Mapped[str] = mapped_column(String(16), default="queued")


class BuildBlock(Base):
    """One block of an index job's full neighbour build (``core.neighbour_build``): the lists
    of rows ``[row_start, row_stop)`` of the build's vectors, computed against all of them by
    whichever worker takes it."""

    __tablename__ = "build_blocks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    block_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    row_start: Mapped[int] = mapped_column(Integer)
    row_stop: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # Runs started (more than one: redelivered), and who started the last (host:pid).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200))
    written: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class BuildIndex(Base):
    """The approximate index of one group of an index job's build (``core.approximate``):
    trained and empty (``centroids``: its k-means centroids and codes, serialised by faiss),
    the probe calibrated on a sample of its rows, and the recall@k that sample measured.
    Stored with the plan, so every block searches the same index."""

    __tablename__ = "build_indexes"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    group_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    probe: Mapped[int] = mapped_column(Integer)
    recall: Mapped[float] = mapped_column(Float)
    centroids: Mapped[bytes] = mapped_column(LargeBinary)


class ImageError(Base):
    """A photo that could not be used, and why. The rest of its job went on."""

    __tablename__ = "image_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True
    )
    product_id: Mapped[str | None] = mapped_column(String(PRODUCT_ID_LENGTH), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_image_errors_job_id", "job_id"),
        Index("ix_image_errors_product_id", "product_id"),
    )


class ChangeCounter(Base):
    """How often a table changed in a way a process that keeps it in memory must know about.

    Triggers (migration 0004) move these in the same transaction as the change: ``vectors`` when
    an embedding is updated or deleted or a product's photo changes, ``neighbours`` on any write to
    the neighbour lists, ``products`` on any metadata update or delete of a product (migration
    0006, for :mod:`core.read_cache`). Inserted embeddings leave ``vectors`` alone, so that
    workers embedding at once do not queue on one row (see :mod:`core.space_cache` for how
    inserts are found).
    """

    __tablename__ = "change_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorCount(Base):
    """How many vectors (rows of ``embeddings``) each model has, kept by triggers in the same
    transaction as the inserts and deletes (migration 0015), so that a process cache checks it
    holds every row by reading one row rather than counting them (core.space_cache). A writer
    holds its model's row from its insert to its commit: embedding steps commit each batch as
    soon as it is stored, and already update their job's row in that transaction too."""

    __tablename__ = "vector_counts"

    model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH), primary_key=True)
    vectors: Mapped[int] = mapped_column(BigInteger)


class VectorChange(Base):
    """The product a move of the ``vectors`` counter was about (None: a truncate, everything),
    one row per move, logged by the same triggers (migration 0014); the last 100,000 kept. A
    process cache follows them rather than reading every vector again (core.space_cache)."""

    __tablename__ = "vector_changes"

    counter: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    product_id: Mapped[str | None] = mapped_column(String(PRODUCT_ID_LENGTH))


class ListWrite(Base):
    """The lists one transaction rewrote, between two values of the ``neighbours`` counter.

    A process whose copy of the list ends was taken at ``previous`` brings it to ``counter`` by
    re-reading only these lists; a gap in the chain means reading them all (core.space_cache).
    """

    __tablename__ = "list_writes"

    counter: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    previous: Mapped[int] = mapped_column(BigInteger)
    product_ids: Mapped[list[str]] = mapped_column(JSON)


@event.listens_for(Product, "before_update")
def _keep_search_text(_mapper: Any, _connection: Any, product: Product) -> None:
    product.search_text = search_text_of(product.meta)
