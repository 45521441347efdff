"""Engines, sessions and schema migrations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

import migrations

T = TypeVar("T")


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
    to the pool. No ping before each checkout either, a third round trip: ``read_retrying``
    instead tries a read once more when its connection turns out dead.
    """
    kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    kwargs.setdefault("pool_reset_on_return", None)
    kwargs.setdefault("pool_pre_ping", False)
    return make_engine(url, **kwargs)


def read_retrying(engine: Engine, read: Callable[[Connection], T]) -> T:
    """``read(connection)`` on a connection of ``engine``, run once more on a new connection
    if the first was dead (the database restarted since it was opened). SQLAlchemy then also
    drops the rest of the pool. Only for reads: a write might have happened."""
    try:
        with engine.connect() as connection:
            return read(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as connection:
        return read(connection)


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


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


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
