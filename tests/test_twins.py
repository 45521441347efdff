"""Products filed with the very same photo never take lookalike places (core.twins): the first
of a group stands for the photo, the others show its list and are named as "same photo as"."""

from __future__ import annotations

import json
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from cli.main import main
from core import row_buffers, twins
from core.catalogue import read_catalogue
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.lookalikes import similar_products
from core.models import Neighbour
from core.neighbour_updates import delete_products, rebuild_lists, update_lists
from core.pending import PendingIds
from core.products import sync_products
from core.spaces import Space, load_space_vectors
from migrations import upgrade
from tests.conftest import in_process_context
from tests.test_indexing import (
    SQL,
    _add,
    _colour_catalogue,
    _sessions,
    _table,
    _warm,
    embed_all_pending,
    table_of,
)

K = 3


def _twin(root: Path, source: str, twin: str) -> None:
    shutil.copy(root / "images" / f"{source}.png", root / "images" / f"{twin}.png")


def _expected(session: Session, space: Space) -> list[tuple[str, int, str, float]]:
    """The table a rebuild gives: top-k among the products that stand for their photo."""
    return table_of(twins.visible(session, load_space_vectors(session, space))[0])


def _listed(session: Session) -> set[str]:
    rows = session.execute(select(Neighbour.product_id, Neighbour.neighbour_id)).all()
    return {a for a, _ in rows} | {b for _, b in rows}


def test_twins_take_no_places_and_follow_their_group(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path, count=12)
    _twin(root, "p03", "p12")
    _twin(root, "p03", "p13")
    context = in_process_context(pixel_encoder, neighbours=K, block_size=5, batch_size=4)
    for _ in index_catalogue(context, db_session, read_catalogue(root).items):
        pass
    space = Space(pixel_encoder.model_id)
    assert twins.photo_groups(db_session) == [["p03", "p12", "p13"]]
    assert "p12" not in _listed(db_session) and "p13" not in _listed(db_session)
    assert _table(db_session) == _expected(db_session, space)
    assert len(_table(db_session)) == 12 * K

    # A twin shows the list of the one standing for its photo, and the group apart.
    own, twin = similar_products(db_session, "p03"), similar_products(db_session, "p12")
    assert [t.id for t in own.same_photo] == ["p12", "p13"]
    assert [t.id for t in twin.same_photo] == ["p03", "p13"]
    assert twin.stored == own.stored
    assert {"p12", "p13", "p03"}.isdisjoint(n.product.id for n in own.stored.neighbours)
    assert similar_products(db_session, "p00").same_photo == []

    # The one standing for the photo goes: the next takes its place, exactly as a rebuild.
    delete_products(db_session, ["p03"], space, SQL, K, 5)
    assert "p12" in _listed(db_session) and "p13" not in _listed(db_session)
    assert _table(db_session) == _expected(db_session, space)

    # A twin that sorts first arrives later: it stands for the photo, p12 leaves every list.
    _twin(root, "p12", "a12")
    sync_products(db_session, read_catalogue(root).items)
    embed_all_pending(db_session, pixel_encoder)
    update_lists(db_session, space, SQL, K, 5)
    assert "p12" not in _listed(db_session) and "a12" in _listed(db_session)
    assert _table(db_session) == _expected(db_session, space)
    rebuilt = _table(db_session)
    assert rebuild_lists(db_session, space, SQL, K, 5) == 0
    assert _table(db_session) == rebuilt


@pytest.fixture
def twins_app(tmp_path: Path, pixel_encoder: PixelEncoder) -> Iterator[tuple[Flask, str]]:
    from web import create_app

    root = _colour_catalogue(tmp_path, count=12)
    _twin(root, "p03", "p12")
    url = f"sqlite:///{tmp_path / 'twins.db'}"
    upgrade(url)
    engine = make_engine(url)
    context = in_process_context(pixel_encoder, neighbours=K, block_size=5, batch_size=4)
    with make_sessionmaker(engine)() as session:
        for _ in index_catalogue(context, session, read_catalogue(root).items):
            session.commit()
        session.commit()
    engine.dispose()
    app = create_app({"database_url": url, "media_dir": tmp_path / "media"})
    yield app, url
    app.extensions["lookalike.engine"].dispose()


def test_api_page_and_command_name_the_same_photo(twins_app: tuple[Flask, str]) -> None:
    app, url = twins_app
    client = app.test_client()
    own = client.get("/api/products/p03/similar").get_json()
    twin = client.get("/api/products/p12/similar").get_json()
    assert [t["id"] for t in own["same_photo_as"]] == ["p12"]
    assert [t["id"] for t in twin["same_photo_as"]] == ["p03"]
    assert twin["product"]["id"] == "p12" and twin["neighbours"] == own["neighbours"]
    assert len(own["neighbours"]) == K
    assert "same_photo_as" not in client.get("/api/products/p00/similar").get_json()

    page = client.get("/products/p12", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert "Same photo as" in page and "/products/p03" in page
    assert page.count('class="card"') == K + 1
    assert "Same photo as" not in client.get("/products/p00").get_data(as_text=True)

    env = {"LOOKALIKE_DATABASE_URL": url}
    result = CliRunner().invoke(main, ["same-photos", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"groups": [["p03", "p12"]]}
    lines = CliRunner().invoke(main, ["similar", "p12"], env=env)
    assert "same photo as p03" in lines.output


def test_a_new_product_or_photo_moves_the_products_counter(db_session: Session) -> None:
    """A new twin changes what its group's lookalikes name: the read cache must drop them."""
    from core.models import Product
    from core.neighbour_table import read_counter
    from core.read_cache import PRODUCTS_COUNTER

    def counter() -> int | None:
        return read_counter(db_session, PRODUCTS_COUNTER)

    before = counter()
    db_session.add(Product(id="x1", meta={}, image_path="/x1.png", content_hash="a" * 64))
    db_session.flush()
    added = counter()
    assert added is not None and before is not None and added > before
    product = db_session.get_one(Product, "x1")
    product.content_hash = "b" * 64
    db_session.flush()
    replaced = counter()
    assert replaced is not None and replaced > added


def test_photo_counts_follow_inserts_photo_changes_and_deletes(db_session: Session) -> None:
    """The counts the triggers keep equal a GROUP BY of the products, after bulk and single
    inserts, photo changes (and metadata changes, which move nothing) and deletes."""
    from sqlalchemy import delete, func, insert, update

    from core.models import PhotoCount, Product

    def counts() -> dict[str, int]:
        kept = dict(db_session.execute(select(PhotoCount.content_hash, PhotoCount.products)).all())  # type: ignore[arg-type]
        truth = select(Product.content_hash, func.count()).group_by(Product.content_hash)
        assert kept == dict(db_session.execute(truth).all())  # type: ignore[arg-type]
        return kept

    rows = [
        {"id": f"q{n:02d}", "meta": {}, "image_path": f"/x/{n}.png", "content_hash": f"h{n % 4}"}
        for n in range(10)
    ]
    db_session.execute(insert(Product), rows)  # one statement for all ten
    assert counts() == {"h0": 3, "h1": 3, "h2": 2, "h3": 2}
    db_session.add(Product(id="q99", meta={}, image_path="/x/99.png", content_hash="h9"))
    db_session.flush()
    db_session.execute(update(Product).where(Product.id == "q00").values(content_hash="h9"))
    db_session.execute(update(Product).where(Product.id == "q01").values(meta={"a": "b"}))
    db_session.execute(
        update(Product).where(Product.id.in_(["q02", "q06"])).values(content_hash="h7")
    )
    assert counts() == {"h0": 2, "h1": 3, "h7": 2, "h3": 2, "h9": 2}
    db_session.execute(delete(Product).where(Product.id.in_(["q04", "q08", "q99"])))
    assert counts() == {"h1": 3, "h7": 2, "h3": 2, "h9": 1}
    assert twins.photo_groups(db_session) == [
        ["q01", "q05", "q09"],
        ["q02", "q06"],
        ["q03", "q07"],
    ]


def test_adds_grow_the_set_without_twins_rather_than_rebuild_it(
    shared_url: str, pixel_encoder: PixelEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's cache grows its vectors by each add's rows; the set without twins grows the
    # same way, so neither it nor the list ends along it are rebuilt from every id per add.
    root = _colour_catalogue(tmp_path, count=20)
    _twin(root, "p03", "p07")
    items = read_catalogue(root).items
    space = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items[:10])

    def from_every_id(*_: object) -> None:
        raise AssertionError("rebuilt from every id")

    with _sessions(shared_url)() as session:
        update_lists(session, space, cache, K, 4)  # the set without twins, once
        session.commit()
        first = twins.visible(session, cache.vectors(session, space))[0]
        first_ids = first.ids
        monkeypatch.setattr("core.vectors.VectorSet.without", from_every_id)
        # Ids looked up one by one however many (as an add's few among a million are).
        monkeypatch.setattr("core.vectors._BISECT_SHARE", 0)
        monkeypatch.setattr("core.list_ends.ListEnds.as_dict", from_every_id)
        before = weakref.ref(first)
        del first
        at_copy: list[tuple[str, object]] = []
        copy_rows, insert_rows = row_buffers.kept_rows, row_buffers.inserted

        def kept_rows(base: np.ndarray, keep: np.ndarray) -> np.ndarray:
            at_copy.append(("kept", before()))  # the set without twins of before, if alive
            return copy_rows(base, keep)

        def inserted(base: np.ndarray, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
            at_copy.append(("inserted", before()))
            return insert_rows(base, at, rows)

        monkeypatch.setattr(row_buffers, "kept_rows", kept_rows)
        monkeypatch.setattr(row_buffers, "inserted", inserted)
        for part in (items[10:15], items[15:]):
            _add(session, pixel_encoder, part)
            session.commit()
            assert update_lists(session, space, cache, K, 4) >= len(part)
            session.commit()
            # One array written: the grown set without twins (the cached set grown by the add
            # is never written); the one before was let go before it, not kept beside it.
            assert at_copy == [("inserted", None)] and before() is None
            # Nor is the list of the cached set's ids: it is looked up where it is pending;
            # and its rows are those of the set without twins and the twins' own.
            cached = cache.vectors(session, space)
            assert isinstance(cached.held_ids, PendingIds)
            without = twins.visible(session, cached)[0]
            assert cached.stored.base is without.vectors  # type: ignore[union-attr]
            # The searched set's list of every id is not made either.
            assert "listed" not in without.held_ids.__dict__
            del cached, without
            at_copy.clear()
            before = weakref.ref(twins.visible(session, cache.vectors(session, space))[0])
        grown = twins.visible(session, cache.vectors(session, space))[0]
        assert "p07" not in grown.ids
        monkeypatch.undo()
        assert [pid for pid in grown.ids if pid < "p10"] == first_ids
        assert _table(session) == _expected(session, space)
        assert "p07" not in _listed(session)

        # A delete copies the set without twins without the product (the one array written:
        # the cached set is held as that one and the twins' rows, so it shrinks with it, and
        # the new set without twins is that copy); then the one before is let go.
        before = weakref.ref(grown)
        del grown
        at_copy.clear()
        monkeypatch.setattr(row_buffers, "kept_rows", kept_rows)
        monkeypatch.setattr(row_buffers, "inserted", inserted)
        delete_products(session, ["p12"], space, cache, K, 4)
        session.commit()
        assert [kind for kind, _ in at_copy] == ["kept"] and before() is None
        cached = cache.vectors(session, space)
        assert cached.stored.base is twins.visible(session, cached)[0].vectors  # type: ignore[union-attr]
        monkeypatch.undo()
        assert _table(session) == _expected(session, space)
