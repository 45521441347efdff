"""A product's lookalikes as people and programs read them: the storefront's hot path (one
statement on the driver's cursor) and the ORM read the pages and the command line use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    CompoundSelect,
    Engine,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from core.db import DriverStatement
from core.errors import NotIndexed, ProductNotFound
from core.models import Embedding, ImageError, Neighbour, Product
from core.partition import key_of
from core.spaces import Space
from core.twins import twins_of


@dataclass(frozen=True)
class ProductSummary:
    """What a neighbour list shows of a product: its id and metadata."""

    id: str
    meta: dict[str, Any]
    # The photo's content hash where the read had it (the pages' thumbnail addresses); the
    # storefront's hot path leaves it out.
    photo: str | None = field(default=None, compare=False)

    @property
    def name(self) -> str | None:
        value = self.meta.get("productDisplayName") if self.meta else None
        return str(value) if value is not None else None


@dataclass
class SimilarProduct:
    rank: int
    product: ProductSummary
    score: float


@dataclass
class StoredList:
    """A stored list, best first, and the metadata columns it was grouped by (none: the whole
    catalogue; ``core.partition``)."""

    neighbours: list[SimilarProduct]
    partition: tuple[str, ...] = ()


def _stored_list(session: Session, product_id: str) -> StoredList:
    rows = session.execute(
        select(
            Neighbour.rank,
            Neighbour.score,
            Product.id,
            Product.meta,
            Product.content_hash,
            Neighbour.space_id,
        )
        .join(Product, Product.id == Neighbour.neighbour_id)
        .where(Neighbour.product_id == product_id)
        .order_by(Neighbour.rank)
    ).all()
    return StoredList(
        [
            SimilarProduct(rank, ProductSummary(pid, meta or {}, photo), score)
            for rank, score, pid, meta, photo, _ in rows
        ],
        _partition_of(rows[0][5] if rows else None),
    )


def _partition_of(space_id: str | None) -> tuple[str, ...]:
    return Space.parse(space_id).partition if space_id else ()


def _summaries(session: Session, product_ids: list[str]) -> list[ProductSummary]:
    if not product_ids:
        return []
    query = select(Product.id, Product.meta, Product.content_hash).where(
        Product.id.in_(product_ids)
    )
    rows: dict[str, Any] = {pid: (meta, photo) for pid, meta, photo in session.execute(query)}
    return [
        ProductSummary(pid, rows[pid][0] or {}, rows[pid][1]) for pid in product_ids if pid in rows
    ]


@dataclass
class Listing:
    """A product, its stored list, and the products filed with the same photo."""

    product: Product
    stored: StoredList
    same_photo: list[ProductSummary]


def similar_products(session: Session, product_id: str) -> Listing:
    """A product, its lookalikes, best first, and the products filed with the same photo
    (``core.twins``: a twin is shown the list of the one that stands for their photo in its
    lookalike group).

    Raises:
        ProductNotFound: no such product.
        NotIndexed: the product has no neighbour list yet.
    """
    product = session.get(Product, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    same_photo = twins_of(session, product_id)
    stored = _stored_list(session, product_id)
    for twin in same_photo if not stored.neighbours else []:
        theirs = _stored_list(session, twin)
        if theirs.neighbours and _same_group(session, product, twin, theirs.partition):
            stored = theirs
            break
    if not stored.neighbours:
        raise NotIndexed(f"product {product_id!r} has no neighbours: {_why(session, product)}")
    return Listing(product, stored, _summaries(session, same_photo))


def _same_group(
    session: Session, product: Product, other_id: str, columns: tuple[str, ...]
) -> bool:
    if not columns:
        return True
    other = session.get(Product, other_id)
    return other is not None and key_of(other.meta, columns) == key_of(product.meta, columns)


def _why(session: Session, product: Product) -> str:
    """Why a product has no list, plainly: its photo failed (and how), waits, or is embedded
    and only its list is still to come."""
    count = session.scalar(
        select(func.count()).select_from(Embedding).where(Embedding.product_id == product.id)
    )
    if count:
        return "its list has not been built yet"
    failed = session.scalars(
        select(ImageError.message)
        .where(ImageError.product_id == product.id, ImageError.path == product.image_path)
        .order_by(ImageError.id.desc())
        .limit(1)
    ).first()
    if failed:
        return f"it has no vector: its photo could not be indexed ({failed})"
    return "it has no vector yet: its photo is waiting to be embedded"


@dataclass
class ProductView:
    """A product and its lookalikes; ``neighbours`` is empty until its list is built."""

    product: Product
    neighbours: list[SimilarProduct]
    reason: str | None = None
    same_photo: list[ProductSummary] = field(default_factory=list)
    partition: tuple[str, ...] = ()  # the columns the list was grouped by


def product_with_lookalikes(session: Session, product_id: str) -> ProductView:
    """A product and its stored lookalikes, or the reason it has none yet.

    Raises:
        ProductNotFound: no such product.
    """
    try:
        found = similar_products(session, product_id)
    except NotIndexed:
        product_or_none = session.get(Product, product_id)
        if product_or_none is None:  # deleted between the two reads
            raise ProductNotFound(product_id) from None
        same = _summaries(session, twins_of(session, product_id))
        return ProductView(product_or_none, [], _why(session, product_or_none), same)
    return ProductView(
        found.product,
        found.stored.neighbours,
        same_photo=found.same_photo,
        partition=found.stored.partition,
    )


@dataclass
class Lookalikes:
    """A product's id and metadata, its stored list, best first, its twins, and the columns the
    list was grouped by."""

    product: ProductSummary
    neighbours: list[SimilarProduct]
    same_photo: list[ProductSummary] = field(default_factory=list)
    partition: tuple[str, ...] = ()


_Row = tuple[int, float | None, str, str | None, str | None]


def _lookalikes_statement() -> CompoundSelect[_Row]:
    products, neighbours = Product.__table__, Neighbour.__table__
    listed = products.alias("listed")
    twins = products.alias("twins")
    product_id = bindparam("product_id", type_=String)
    own_photo = select(products.c.content_hash).where(products.c.id == product_id)
    # The product itself comes first as rank 0, the products with the same photo (core.twins)
    # as rank -1 (an index lookup: usually none). Table columns, not ORM attributes, and one
    # statement built once: no ORM loading and no cache key to compute per request. The
    # metadata comes as its JSON text, parsed here by orjson, whatever the driver.
    return union_all(
        select(
            literal_column("0", Integer).label("rank"),
            null().cast(Float).label("score"),
            products.c.id,
            cast(products.c.meta, Text).label("meta"),
            null().cast(String).label("space_id"),
        ).where(products.c.id == product_id),
        select(
            neighbours.c.rank,
            neighbours.c.score,
            listed.c.id,
            cast(listed.c.meta, Text).label("meta"),
            neighbours.c.space_id,
        )
        .join(listed, listed.c.id == neighbours.c.neighbour_id)
        .where(neighbours.c.product_id == product_id),
        select(
            literal_column("-1", Integer).label("rank"),
            null().cast(Float).label("score"),
            twins.c.id,
            cast(twins.c.meta, Text).label("meta"),
            null().cast(String).label("space_id"),
        ).where(twins.c.content_hash == own_photo.scalar_subquery(), twins.c.id != product_id),
    ).order_by(literal_column("rank"), literal_column("id"))


_LOOKALIKES = _lookalikes_statement()


def _summary(product_id: str, meta: str | None) -> ProductSummary:
    return ProductSummary(product_id, orjson.loads(meta) if meta else {})


class LookalikesReader:
    """A product and its stored neighbour list, best first: the storefront's hot path.

    One statement reads both, so they come from one snapshot even outside a transaction; it
    runs on the driver's own cursor (``core.db.DriverStatement``), on an engine of its own in
    autocommit (``core.db.make_read_engine``): no BEGIN, no ROLLBACK, no ping, no ORM.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statement = DriverStatement(engine, _LOOKALIKES)

    def __call__(self, product_id: str) -> Lookalikes:
        """The product and its list.

        Raises:
            ProductNotFound: no such product.
            NotIndexed: the product has no neighbour list yet.
        """
        rows = self._statement.rows(product_id=product_id)
        own = [row for row in rows if row[0] == 0]
        if not own:
            raise ProductNotFound(product_id)
        listed = [row for row in rows if row[0] > 0]
        if not listed:
            # Rare: a twin, or no list yet; the full read finds the twin's list, or says why
            # there is none (or finds one written meanwhile).
            return self._full_read(product_id)
        (_, _, own_id, own_meta, _) = own[0]
        return Lookalikes(
            _summary(own_id, own_meta),
            [SimilarProduct(row[0], _summary(row[2], row[3]), row[1]) for row in listed],
            [_summary(row[2], row[3]) for row in rows if row[0] < 0],
            _partition_of(listed[0][4]),
        )

    def _full_read(self, product_id: str) -> Lookalikes:
        with self.engine.connect() as connection, Session(bind=connection) as session:
            found = similar_products(session, product_id)
            own = ProductSummary(found.product.id, found.product.meta or {})
        return Lookalikes(own, found.stored.neighbours, found.same_photo, found.stored.partition)
