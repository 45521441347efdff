"""Engines and sessions: how ``core`` talks to SQLite and PostgreSQL (migrations live in
``migrations``, which builds on this module, never the other way)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ClauseElement, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")
# Values per IN (...) list: well under every driver's parameter limit.
IN_CHUNK = 500


def in_chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``size``, for IN (...) lists."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and a busy timeout."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_read_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for reads of one statement each (the storefront's hot path).

    Autocommit: a statement reads one snapshot on its own, and there is no BEGIN before it nor
    ROLLBACK after it, two round trips saved; so nothing to reset when a connection goes back
    to the pool. No ping before each checkout either, a third round trip: ``DriverStatement``
    instead tries a read once more when its connection turns out dead.
    """
    kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    kwargs.setdefault("pool_reset_on_return", None)
    kwargs.setdefault("pool_pre_ping", False)
    return make_engine(url, **kwargs)


class DriverStatement:
    """A read compiled once for an engine's dialect and run on the driver's own cursor.

    SQLAlchemy's ``Connection`` and result rows cost more than the query itself on the hot
    read path (about 0.2 ms a call, measured in bench/read_path.py's notes); this keeps its
    pool, its compiler and its dialect, and drops the rest. So only for statements whose
    parameters and columns need no type processing (strings, numbers, JSON read as text).

    A connection that turns out dead (the database restarted since it was pooled) costs one
    retry on a new pool, not an error; only reads, as a write might have happened.
    """

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        assert isinstance(compiled, SQLCompiler)
        self.engine = engine
        self.sql = str(compiled)
        self._positions = compiled.positiontup if compiled.positional else None

    def rows(self, **params: Any) -> list[Any]:
        """Every row of the statement with ``params``, as the driver returns them."""
        args: Any = params
        if self._positions is not None:
            args = tuple(params[name] for name in self._positions)
        for attempt in (1, 2):
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(self.sql, args)
                    return list(cursor.fetchall())
                finally:
                    cursor.close()
            except self.engine.dialect.loaded_dbapi.Error as exc:
                dialect = self.engine.dialect
                if attempt == 2 or not dialect.is_disconnect(
                    exc, connection.dbapi_connection, None
                ):
                    raise
                connection.invalidate(exc)
                # The pool's other connections died with this one: start a new pool, as
                # SQLAlchemy itself does when it meets a dead connection.
                self.engine.dispose()
            finally:
                connection.close()
        raise AssertionError("the second attempt returns or raises")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL still never corrupts the file; a power cut may lose the last commits,
    # which an index run simply redoes. FULL would fsync every batch.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def upsert(session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE for SQLite and PostgreSQL: safe to run twice."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:
        raise NotImplementedError(f"upsert on {dialect}")
    statement = insert(table)
    updates = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    statement = statement.on_conflict_do_update(index_elements=keys, set_=updates)
    session.execute(statement, rows)


def read_rows(session: Session, statement: Any) -> list[Any]:
    """Every row of ``statement``: on PostgreSQL (psycopg) fetched in binary format, which sends
    vectors as raw bytes rather than hex text and so reads a catalogue's about three times
    faster; through SQLAlchemy elsewhere. Columns come back as the driver gives them."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        return list(session.execute(statement).all())
    session.flush()  # as SQLAlchemy's autoflush would before its own queries
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        # Never prepared: psycopg prepares a statement run five times, and the generic plan
        # PostgreSQL then keeps was chosen for the table as it was (a seq scan of an empty
        # neighbours table, say, kept after a build filled it: seconds per read).
        cursor.execute(compiled.string, compiled.params, prepare=False)
        return list(cursor.fetchall())


@contextmanager
def by_key(session: Session) -> Iterator[None]:
    """Within: reads by key (``IN`` lists of ids) use the index on PostgreSQL, whatever its
    statistics say. A table filled since it was last analysed (a build writes millions of list
    rows; autovacuum may be off, or not have run yet) has statistics that make the planner
    scan all of it for each list of 500 ids: half a second each at two million rows."""
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    session.execute(text("SET LOCAL enable_seqscan = off"))
    try:
        yield
    finally:
        session.execute(text("SET LOCAL enable_seqscan TO DEFAULT"))


def keyset_pages(
    session: Session, statement: Any, key: Any, rows: int, *, joined: Sequence[Any] = ()
) -> Iterator[list[Any]]:
    """The rows of ``statement`` ``rows`` at a time, in order of ``key`` (its first column,
    unique): each page starts after the last key of the one before, so a large table is read
    through an index without holding it, and no OFFSET rescans what was read. ``joined``:
    columns joined equal to ``key``, given the same start, so that a merge join's other side
    starts there too instead of at its beginning."""
    last: Any = None
    while True:
        page = statement
        if last is not None:
            page = page.where(*(column > last for column in (key, *joined)))
        found = read_rows(session, page.order_by(key).limit(rows))
        if not found:
            return
        yield found
        last = found[-1][0]
