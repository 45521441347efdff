"""The storefront's read path: a product's lookalikes from ``core`` and from
``GET /api/products/<id>/similar``, on SQLite and PostgreSQL. The response's bytes are pinned,
so a change of serialiser cannot change what a client reads unnoticed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from flask import Flask, url_for
from sqlalchemy import Engine, delete, event, select, text
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core.catalogue import read_catalogue
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.errors import NotIndexed, ProductNotFound
from core.lookalikes import similar_products
from core.models import Neighbour, Product
from migrations import upgrade
from tests.conftest import SAMPLE_IDS, TSHIRTS, in_process_context

UNLISTED = TSHIRTS[1]  # has a vector, but its list was removed
ODD = "odd id+é?&"  # an id that addresses must quote; it has a list and is in another's


def index_only(session: Session, catalogue: Path) -> None:
    """Index ``catalogue`` in process with the pixel encoder."""
    context = in_process_context(
        PixelEncoder(max_pixels=50_000_000), block_size=64, batch_size=8, decode_workers=1
    )
    for _ in index_catalogue(context, session, read_catalogue(catalogue).items):
        session.flush()


def index(session: Session, catalogue: Path) -> None:
    """Index ``catalogue`` with the pixel encoder, then add a product without a vector, take
    away one product's list, and add a product with an odd id in the lists."""
    index_only(session, catalogue)
    photo = catalogue / "images" / f"{SAMPLE_IDS[0]}.jpg"
    session.add(Product(id="lone", meta={}, image_path=str(photo), content_hash="0" * 64))
    session.execute(delete(Neighbour).where(Neighbour.product_id == UNLISTED))
    session.add(
        Product(
            id=ODD,
            meta={"productDisplayName": "Odd é"},
            image_path=str(photo),
            content_hash="1" * 64,
        )
    )
    session.flush()
    for row in session.scalars(select(Neighbour).where(Neighbour.product_id == TSHIRTS[0])):
        session.add(
            Neighbour(
                product_id=ODD,
                rank=row.rank,
                neighbour_id=row.neighbour_id,
                score=row.score,
                space_id=row.space_id,
            )
        )
        if row.rank == 10:
            row.neighbour_id = ODD
    session.flush()


LISTED = [pid for pid in [*SAMPLE_IDS, ODD] if pid != UNLISTED]


def test_lookalikes_read_what_similar_products_reads(read_app: Flask) -> None:
    lookalikes = read_app.extensions["lookalike.lookalikes"]
    with read_app.extensions["lookalike.sessions"]() as session:
        for product_id in LISTED:
            found = lookalikes(product_id)
            listing = similar_products(session, product_id)
            product = listing.product
            assert (found.product.id, found.product.meta) == (product.id, product.meta)
            assert found.neighbours == listing.stored.neighbours
            assert found.partition == listing.stored.partition == ()
            assert [n.rank for n in found.neighbours] == list(range(1, 11))
            assert all(isinstance(n.score, float) for n in found.neighbours)
    with pytest.raises(NotIndexed, match="no vector yet"):
        lookalikes("lone")
    with pytest.raises(NotIndexed, match="has not been built yet"):
        lookalikes(UNLISTED)
    with pytest.raises(ProductNotFound):
        lookalikes("nope")


@pytest.fixture(params=["sqlite", "postgresql"])
def read_app(
    request: pytest.FixtureRequest, sample_catalogue: Path, tmp_path: Path
) -> Iterator[Flask]:
    """The app over an indexed catalogue on SQLite or PostgreSQL."""
    from web import create_app

    if request.param == "postgresql":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'read.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        index(session, sample_catalogue)
        session.commit()
    engine.dispose()
    app = create_app({"database_url": url, "media_dir": tmp_path / "media"})
    yield app
    app.extensions["lookalike.engine"].dispose()
    app.extensions["lookalike.read_engine"].dispose()


def expected_body(
    app: Flask, product_id: str, base_url: str = "http://localhost"
) -> dict[str, Any]:
    """The documented response, built from the tables with plain queries and ``url_for``."""
    with app.extensions["lookalike.sessions"]() as session:
        meta = dict(session.execute(select(Product.id, Product.meta)).all())
        rows = session.execute(
            select(Neighbour.rank, Neighbour.score, Neighbour.neighbour_id)
            .where(Neighbour.product_id == product_id)
            .order_by(Neighbour.rank)
        ).all()

    def item(pid: str) -> dict[str, Any]:
        with app.test_request_context(base_url=base_url):
            image_url = url_for("api.product_image", product_id=pid)
        return {"id": pid, **meta[pid], "image_url": image_url}

    return {
        "product": item(product_id),
        "neighbours": [
            {"rank": rank, "score": round(score, 6), **item(pid)} for rank, score, pid in rows
        ],
    }


def watch_statements(engine: Engine, statements: list[tuple[str, bool | None]]) -> None:
    """Record every statement the driver runs on ``engine``'s new connections, with psycopg's
    autocommit flag: the read path uses the driver's cursor, so SQLAlchemy's events miss it."""

    @event.listens_for(engine, "connect")
    def watch(dbapi_connection: Any, _record: Any) -> None:
        if engine.dialect.name == "postgresql":

            class Watched(psycopg.Cursor[Any]):
                def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                    statements.append((str(query), dbapi_connection.autocommit))
                    return super().execute(query, *args, **kwargs)

            dbapi_connection.cursor_factory = Watched
        else:
            dbapi_connection.set_trace_callback(lambda sql: statements.append((sql, None)))


def test_similar_answers_the_documented_bytes_from_one_autocommit_statement(
    read_app: Flask,
) -> None:
    client = read_app.test_client()
    engine = read_app.extensions["lookalike.read_engine"]
    engine.dispose()  # so that every connection is opened, and watched, from here on
    statements: list[tuple[str, bool | None]] = []
    watch_statements(engine, statements)

    for product_id in LISTED:
        statements.clear()
        response = client.get(f"/api/products/{quote(product_id)}/similar")
        executed = list(statements)
        assert response.status_code == 200 and response.mimetype == "application/json"
        body = expected_body(read_app, product_id)
        assert response.get_json() == body
        # Flask's compact, key-sorted JSON and a newline, with text as UTF-8 (orjson).
        text = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        assert response.get_data(as_text=True) == text + "\n"
        # One statement, outside any transaction (psycopg's autocommit; SQLite's differs),
        # beside the read cache's look at the change counters (at most once a second).
        reads = [e for e in executed if "change_counters" not in e[0]]
        assert len(reads) == 1 and len(executed) - len(reads) <= 1, executed
        if engine.dialect.name == "postgresql":
            assert all(autocommit is True for _, autocommit in executed)
        # Asked again: the same bytes, from this process's memory (core.read_cache).
        statements.clear()
        again = client.get(f"/api/products/{quote(product_id)}/similar")
        assert again.get_data() == response.get_data()
        assert not [e for e in statements if "change_counters" not in e[0]], statements

    # Behind a path prefix, photo addresses carry it.
    response = client.get(f"/api/products/{TSHIRTS[0]}/similar", base_url="http://shop/store")
    body = expected_body(read_app, TSHIRTS[0], "http://shop/store")
    assert response.get_json() == body and body["product"]["image_url"].startswith("/store/")


def test_similar_errors_keep_their_json_shape(read_app: Flask) -> None:
    client = read_app.test_client()
    for product_id, status, code, phrase in [
        ("nope", 404, "product_not_found", "no product with id 'nope'"),
        ("lone", 409, "not_indexed", "it has no vector yet"),
        (UNLISTED, 409, "not_indexed", "its list has not been built yet"),
    ]:
        response = client.get(f"/api/products/{product_id}/similar")
        assert response.status_code == status
        error = response.get_json()["error"]
        assert set(error) == {"code", "message"} and error["code"] == code
        assert phrase in error["message"]
    # Errors or not, no connection was left inside a transaction.
    engine = read_app.extensions["lookalike.engine"]
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            states = connection.scalars(
                text(
                    "SELECT state FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
        assert states and "idle in transaction" not in states


def test_similar_reads_on_after_the_database_drops_its_connections(fresh_pg_url: str) -> None:
    """No ping before each read: a dead pooled connection costs a retry, not an error."""
    from web import create_app

    upgrade(fresh_pg_url)
    app = create_app({"database_url": fresh_pg_url})
    client = app.test_client()
    try:
        assert client.get("/api/products/nope/similar").status_code == 404
        admin = make_engine(fresh_pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            dropped = connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        admin.dispose()
        assert dropped
        assert client.get("/api/products/nope/similar").status_code == 404
    finally:
        app.extensions["lookalike.engine"].dispose()
        app.extensions["lookalike.read_engine"].dispose()
