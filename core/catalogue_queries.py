"""Read-only queries behind the web pages and the API: a filtered, paged catalogue, the values
to filter by, a product's lookalikes, and recent jobs with their per-image errors. Each takes a
``Session`` that the caller owns, except the lookalikes read, which has an engine of its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import (
    CompoundSelect,
    Engine,
    Float,
    Integer,
    Select,
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
from core.indexing import ProductSummary, SimilarProduct, similar_products
from core.jobs import recent_jobs
from core.models import ImageError, Job, Neighbour, Product

# The metadata columns a shopper filters by, in the order shown, when a catalogue has them
# (the Kaggle fashion data does; a plain folder of photos has none, and so no filters).
FILTER_FIELDS = ("gender", "masterCategory", "articleType", "baseColour")


@dataclass
class FilterOption:
    value: str
    count: int


@dataclass
class Filter:
    """One metadata column and the values it takes, most common first."""

    column: str
    options: list[FilterOption]


@dataclass
class ProductPage:
    items: list[Product]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _filtered(query: Select[tuple[Product]], filters: Mapping[str, str]) -> Select[tuple[Product]]:
    for name, value in filters.items():
        query = query.where(Product.meta[name].as_string() == value)
    return query


def catalogue_filters(
    session: Session, fields: Sequence[str] = FILTER_FIELDS, most: int = 100
) -> list[Filter]:
    """The filterable columns present in the catalogue and their values with counts.

    A column no product has is left out; a column with more than ``most`` values is cut to
    the ``most`` most common, as a longer menu helps nobody.
    """
    found = []
    for name in fields:
        value = Product.meta[name].as_string()
        rows = session.execute(
            select(value, func.count())
            .where(value.is_not(None), value != "")
            .group_by(value)
            .order_by(func.count().desc(), value)
            .limit(most)
        ).all()
        if rows:
            found.append(Filter(name, [FilterOption(str(v), int(n)) for v, n in rows]))
    return found


def browse_products(
    session: Session, filters: Mapping[str, str], page: int, per_page: int
) -> ProductPage:
    """One page of products, in id order, whose metadata equals every value in ``filters``.

    A page past the end is moved back to the last page, so a stale link still shows products.
    """
    query = _filtered(select(Product), filters)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    result = ProductPage([], max(1, page), per_page, total)
    result.page = min(result.page, result.pages)
    result.items = list(
        session.scalars(
            query.order_by(Product.id).offset((result.page - 1) * per_page).limit(per_page)
        )
    )
    return result


@dataclass
class ProductView:
    """A product and its lookalikes; ``neighbours`` is empty until its list is built."""

    product: Product
    neighbours: list[SimilarProduct]
    reason: str | None = None


def product_with_lookalikes(session: Session, product_id: str) -> ProductView:
    """A product and its stored lookalikes, or the reason it has none yet.

    Raises:
        ProductNotFound: no such product.
    """
    try:
        product, neighbours = similar_products(session, product_id)
    except NotIndexed as exc:
        product_or_none = session.get(Product, product_id)
        if product_or_none is None:  # deleted between the two reads
            raise ProductNotFound(product_id) from None
        return ProductView(product_or_none, [], exc.message)
    return ProductView(product, neighbours)


@dataclass
class Lookalikes:
    """A product's id and metadata, and its stored list, best first."""

    product: ProductSummary
    neighbours: list[SimilarProduct]


def _lookalikes_statement() -> CompoundSelect[tuple[int, float | None, str, str | None]]:
    products, neighbours = Product.__table__, Neighbour.__table__
    listed = products.alias("listed")
    product_id = bindparam("product_id", type_=String)
    # The product itself comes first as rank 0. Table columns, not ORM attributes, and one
    # statement built once: no ORM loading and no cache key to compute per request. The
    # metadata comes as its JSON text, parsed here by orjson, whatever the driver.
    return union_all(
        select(
            literal_column("0", Integer).label("rank"),
            null().cast(Float).label("score"),
            products.c.id,
            cast(products.c.meta, Text).label("meta"),
        ).where(products.c.id == product_id),
        select(
            neighbours.c.rank,
            neighbours.c.score,
            listed.c.id,
            cast(listed.c.meta, Text).label("meta"),
        )
        .join(listed, listed.c.id == neighbours.c.neighbour_id)
        .where(neighbours.c.product_id == product_id),
    ).order_by(literal_column("rank"))


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
        if not rows:
            raise ProductNotFound(product_id)
        if len(rows) == 1:
            # Rare: let the full read say why there is no list (or find one written meanwhile).
            return self._full_read(product_id)
        (_, _, own_id, own_meta), *listed = rows
        return Lookalikes(
            _summary(own_id, own_meta),
            [SimilarProduct(rank, _summary(pid, meta), score) for rank, score, pid, meta in listed],
        )

    def _full_read(self, product_id: str) -> Lookalikes:
        with self.engine.connect() as connection, Session(bind=connection) as session:
            product, neighbours = similar_products(session, product_id)
        return Lookalikes(ProductSummary(product.id, product.meta or {}), neighbours)


@dataclass
class JobView:
    job: Job
    errors: list[ImageError] = field(default_factory=list)

    @property
    def state(self) -> str:
        # "finalising" is an internal step of "running", as the API reports it.
        return "running" if self.job.state == "finalising" else self.job.state

    def duration(self, now: datetime | None = None) -> float | None:
        """Seconds from start to finish, or to ``now`` while it runs; None before it starts."""
        if self.job.started_at is None:
            return None
        end = self.job.finished_at or now or datetime.now(UTC)
        return (_aware(end) - _aware(self.job.started_at)).total_seconds()


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def jobs_with_errors(session: Session, limit: int = 30) -> list[JobView]:
    """The most recent jobs, newest first, each with its per-image errors (two queries)."""
    jobs = recent_jobs(session, limit)
    errors: dict[str | None, list[ImageError]] = defaultdict(list)
    if jobs:
        for error in session.scalars(
            select(ImageError)
            .where(ImageError.job_id.in_([job.id for job in jobs]))
            .order_by(ImageError.id)
        ):
            errors[error.job_id].append(error)
    return [JobView(job, errors.get(job.id, [])) for job in jobs]
