"""Read-only queries behind the web pages and the API: a filtered, paged catalogue, the values
to filter by, and recent jobs with their per-image errors (a product's lookalikes are
``core.lookalikes``). Each takes a ``Session`` that the caller owns."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    text,
    true,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from core.errors import InvalidRequest
from core.jobs import JobKind, JobState, recent_jobs, state_of
from core.models import ImageError, Job, Product

# The metadata columns a shopper filters by, in the order shown, when a catalogue has them
# (the Kaggle fashion data does; a plain folder of photos has none, and so no filters).
FILTER_FIELDS = ("gender", "masterCategory", "articleType", "baseColour")


T = TypeVar("T")


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
class Page(Generic[T]):
    """One page of a listing: its items, which page it is, and how many there are in all."""

    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


ProductPage = Page[Product]


def _one_page(
    session: Session,
    query: Select[Any],
    order: Sequence[Any],
    page: int,
    per_page: int,
) -> Page[Any]:
    """The rows of ``query`` on ``page``, counted first; a page past the end is moved back to
    the last page, so a stale link still shows rows."""
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    found: Page[Any] = Page([], max(1, page), per_page, total)
    found.page = min(found.page, found.pages)
    offset = (found.page - 1) * per_page
    found.items = list(session.scalars(query.order_by(*order).offset(offset).limit(per_page)))
    return found


# Metadata whose JSON text holds an escaped NUL: PostgreSQL fails a whole query that extracts
# anything from such a row ("\\u0000 cannot be converted to text"). core.metadata refuses NUL
# wherever metadata enters; this keeps a row stored before that out of filters and menus
# instead of failing every page. (CASE is evaluated lazily, so ->> never sees such a row.)
_READABLE = ~cast(Product.meta, Text).contains("\\u0000", autoescape=True)


def _field(name: str) -> ColumnElement[str | None]:
    """The text of a top-level metadata field, NULL where it is missing or unreadable."""
    return case((_READABLE, Product.meta[name].as_string()), else_=null())


def _filtered(query: Select[tuple[Product]], filters: Mapping[str, str]) -> Select[tuple[Product]]:
    for name, value in filters.items():
        query = query.where(_field(name) == value)
    return query


# Longest name search taken, in characters (a search box, not a document).
MAX_QUERY = 200


def search_words(query: str) -> list[str]:
    """The words of a name search, case-folded as ``search_text`` is (``core.models``)."""
    return query.casefold().split()


def like_pattern(word: str) -> str:
    """``%word%`` for LIKE with ``\\`` as the escape: the word's own % and _ match themselves."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _matching(
    session: Session, query: Select[tuple[Product]], words: Sequence[str]
) -> Select[tuple[Product]]:
    """Products whose text metadata holds every word (anywhere: "polo" finds "Polos"), through
    each database's trigram index: pg_trgm's GIN index on ``search_text`` answers
    ``LIKE '%word%'``; SQLite's FTS5 trigram table ``products_search`` (migration 0009) answers
    a quoted phrase ``MATCH``, the same substring test. Words under three characters have no
    trigram: both then scan (PostgreSQL its index, SQLite the table)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    for n, word in enumerate(words):
        name = f"word_{n}"
        if not sqlite:
            pattern: BindParameter[str] = bindparam(name, like_pattern(word))
            query = query.where(Product.search_text.like(pattern, escape="\\"))
            continue
        if len(word) >= 3:
            phrase = '"' + word.replace('"', '""') + '"'
            hits = text(
                f"SELECT rowid FROM products_search WHERE products_search MATCH :{name}"
            ).bindparams(bindparam(name, phrase))
        else:
            hits = text(
                f"SELECT rowid FROM products_search WHERE search_text LIKE :{name} ESCAPE '\\'"
            ).bindparams(bindparam(name, like_pattern(word)))
        query = query.where(literal_column("products.rowid").in_(hits))
    return query


def metadata_keys(session: Session) -> list[str]:
    """Every top-level metadata key some product has, sorted (one scan of the catalogue)."""
    query: Select[tuple[str]]
    if session.get_bind().dialect.name == "postgresql":
        query = select(func.json_object_keys(Product.meta)).where(
            _READABLE, func.json_typeof(Product.meta) == "object"
        )
    else:
        each = func.json_each(Product.meta).table_valued("key")
        query = select(each.c.key).select_from(Product).join(each, true()).where(_READABLE)
    return sorted(str(key) for key in session.scalars(query.distinct()))


def check_filters(session: Session, filters: Mapping[str, str]) -> None:
    """Refuse filters that can match nothing for a reason the caller should hear about.

    A filter is a top-level metadata key: one of ``FILTER_FIELDS`` (whether or not the
    catalogue has it yet), or any key some product has. Values are compared as text.

    Raises:
        InvalidRequest: an unknown key (the message lists the filterable ones), or a value
            with a NUL character, which no metadata can hold.
    """
    for name, value in filters.items():
        if "\x00" in value:
            raise InvalidRequest(f"filter {name[:40]!r} has a NUL character in its value")
    unknown = [name for name in filters if name not in FILTER_FIELDS]
    if not unknown:
        return
    known = set(metadata_keys(session))
    unknown = [name for name in unknown if name not in known]
    if unknown:
        keys = ", ".join(sorted(known.union(FILTER_FIELDS)))
        raise InvalidRequest(
            f"unknown filter {unknown[0][:40]!r}: filter by a metadata key the catalogue has "
            f"({keys}), or page, per_page"
        )


def catalogue_filters(
    session: Session, fields: Sequence[str] = FILTER_FIELDS, most: int = 100
) -> list[Filter]:
    """The filterable columns present in the catalogue and their values with counts.

    A column no product has is left out; a column with more than ``most`` values is cut to
    the ``most`` most common, as a longer menu helps nobody.
    """
    found = []
    for name in fields:
        value = _field(name)
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
    session: Session, filters: Mapping[str, str], page: int, per_page: int, query: str = ""
) -> ProductPage:
    """One page of products, in natural id order (``p2`` before ``p10``), whose metadata
    equals every value in ``filters`` and whose text metadata holds every word of ``query``.

    A page past the end is moved back to the last page, so a stale link still shows products.
    """
    selected = _matching(session, _filtered(select(Product), filters), search_words(query))
    return _one_page(session, selected, (Product.sort_key, Product.id), page, per_page)


@dataclass
class JobView:
    job: Job
    errors: list[ImageError] = field(default_factory=list)

    @property
    def state(self) -> JobState:
        return state_of(self.job).shown

    def duration(self, now: datetime | None = None) -> float | None:
        """Seconds from start to finish, or to ``now`` while it runs; None before it starts."""
        if self.job.started_at is None:
            return None
        end = self.job.finished_at or now or datetime.now(UTC)
        return (_aware(end) - _aware(self.job.started_at)).total_seconds()


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class JobPage(Page[JobView]):
    """One page of the jobs, newest first, of a state and a kind (None: any)."""

    state: JobState | None = None
    kind: JobKind | None = None


def jobs_page(
    session: Session,
    page: int,
    per_page: int,
    state: JobState | None = None,
    kind: JobKind | None = None,
) -> JobPage:
    """Jobs newest first, ``per_page`` at a time, each with its per-image errors; ``state`` as
    the pages show it (running includes finalising). A page past the end shows the last."""
    query = select(Job)
    if state is not None:
        stored = [s.value for s in JobState if s.shown is state]
        query = query.where(Job.state.in_(stored))
    if kind is not None:
        query = query.where(Job.kind == kind.value)
    jobs: Page[Job] = _one_page(session, query, (Job.created_at.desc(), Job.id), page, per_page)
    views = _with_errors(session, jobs.items)
    return JobPage(views, jobs.page, per_page, jobs.total, state, kind)


def jobs_with_errors(session: Session, limit: int = 30) -> list[JobView]:
    """The most recent jobs, newest first, each with its per-image errors (two queries)."""
    return _with_errors(session, recent_jobs(session, limit))


def _with_errors(session: Session, jobs: list[Job]) -> list[JobView]:
    errors: dict[str | None, list[ImageError]] = defaultdict(list)
    if jobs:
        for error in session.scalars(
            select(ImageError)
            .where(ImageError.job_id.in_([job.id for job in jobs]))
            .order_by(ImageError.id)
        ):
            errors[error.job_id].append(error)
    return [JobView(job, errors.get(job.id, [])) for job in jobs]
