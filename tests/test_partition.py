"""Lookalikes within a group (LOOKALIKE_PARTITION, core.partition): every list comes from its
product's own group, exactly, through rebuilds, adds, metadata moves and deletes; a change of
setting rebuilds; the API, the page and the command line say which grouping a list uses."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from cli.main import main
from core import partition
from core.catalogue import read_catalogue
from core.context import Context
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.models import Neighbour, Product
from core.neighbours import add_to_lists, top_k
from core.products import stored_items
from core.settings import get_settings
from core.spaces import Space, load_space_vectors
from core.submissions import submit_add_products, submit_delete
from core.uploads import Upload
from migrations import upgrade
from tests.conftest import in_process_context
from tests.test_indexing import _colour_catalogue, _table
from tests.test_openapi import conforms, described

K = 3
GENDERS = ["Men", "Women", "Unisex"]


def test_grouped_top_k_is_the_top_k_of_each_group() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(90, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = rng.integers(0, 4, size=90)
    groups[7] = 9  # a group of one: an empty list
    grouped = top_k(vectors, 5, block_size=16, groups=groups)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        alone = top_k(vectors[members], 5)
        mapped = np.where(alone.positions >= 0, members[alone.positions], -1)
        assert np.array_equal(grouped.positions[members], mapped)
        assert np.array_equal(grouped.scores[members], alone.scores)
    assert (grouped.positions[7] == -1).all()

    # Adding rows to grouped lists gives what the grouped top-k of everything gives.
    old, new = np.arange(0, 90, 3), np.setdiff1d(np.arange(90), np.arange(0, 90, 3))
    current = top_k(vectors, 5, block_size=16, queries=old, candidates=old, groups=groups)
    updated, added = add_to_lists(vectors, current, old, new, 5, 16, groups=groups)
    assert added is not None
    assert np.array_equal(updated.positions, grouped.positions[old])
    assert np.array_equal(added.positions, grouped.positions[new])


def _catalogue(root: Path, count: int) -> Path:
    _colour_catalogue(root, count=count)
    with (root / "styles.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "gender", "productDisplayName"])
        for index in range(count):
            gender = GENDERS[index % 3] if index != count - 1 else ""
            writer.writerow([f"p{index:02d}", gender, f"Thing {index}"])
    return root


def _context(tmp_path: Path, encoder: PixelEncoder, grouped: bool = True) -> Context:
    return in_process_context(
        encoder,
        neighbours=K,
        block_size=5,
        batch_size=4,
        media_dir=tmp_path / "media",
        partition="gender" if grouped else "",
    )


def _run(context: Context, session: Session) -> None:
    for _ in context.queue.run(context, session):  # type: ignore[attr-defined]
        pass


def _expected(session: Session, space: Space) -> list[tuple[str, int, str, float]]:
    """The table a rebuild gives: each product's top-k within its gender."""
    vectors = load_space_vectors(session, space)
    groups = partition.group_numbers(session, vectors.ids, space.partition)
    lists = top_k(vectors.vectors, K, groups=groups if space.partition else None)
    return sorted(
        (pid, rank + 1, vectors.ids[pos], round(float(score), 5))
        for pid, row, scores in zip(vectors.ids, lists.positions, lists.scores, strict=True)
        for rank, (pos, score) in enumerate(zip(row, scores, strict=True))
        if pos >= 0
    )


def _genders(session: Session) -> dict[str, str | None]:
    rows = session.execute(select(Product.id, Product.meta))
    return {pid: (meta or {}).get("gender") for pid, meta in rows}


def _photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_lists_stay_within_their_group_through_every_change(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _catalogue(tmp_path, count=16)
    context = _context(tmp_path, pixel_encoder)
    for _ in index_catalogue(context, db_session, read_catalogue(root).items):
        pass
    space = Space(pixel_encoder.model_id, partition=("gender",))
    table = _table(db_session)
    assert table == _expected(db_session, space)
    genders = _genders(db_session)
    assert all(genders[a] == genders[b] for a, _, b, _ in table)
    assert {row[0] for row in table} == set(genders) - {"p15"}  # p15 is alone in its group
    spaces = set(db_session.scalars(select(Neighbour.space_id)))
    assert spaces == {f"{pixel_encoder.model_id}|by:gender"}

    # New products, and a product moved to another group by new metadata on the same photo.
    own_photo = (root / "images" / "p01.png").read_bytes()
    uploads = [
        Upload("n1.png", _photo(1), meta={"gender": "Men"}),
        Upload("n2.png", _photo(2), meta={"gender": "Women"}),
        Upload("p01.png", own_photo, meta={"gender": "Unisex"}),  # was Women
    ]
    submit_add_products(context, db_session, uploads)
    _run(context, db_session)
    assert _table(db_session) == _expected(db_session, space)
    assert _genders(db_session)["p01"] == "Unisex"

    submit_delete(context, db_session, "p04")
    _run(context, db_session)
    assert _table(db_session) == _expected(db_session, space)

    # The setting changes: the next job rebuilds every list in the new space.
    plain = _context(tmp_path, pixel_encoder, grouped=False)
    for _ in index_catalogue(plain, db_session, stored_items(db_session)):
        pass
    ungrouped = Space(pixel_encoder.model_id)
    assert _table(db_session) == _expected(db_session, ungrouped)
    assert set(db_session.scalars(select(Neighbour.space_id))) == {pixel_encoder.model_id}
    # And back, through an add alone (no rebuild asked for): every list moves again.
    submit_add_products(context, db_session, [Upload("n3.png", _photo(3), meta={"gender": "Men"})])
    _run(context, db_session)
    assert _table(db_session) == _expected(db_session, space)


def test_identical_photos_in_two_groups_each_stand_for_their_group(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _catalogue(tmp_path, count=9)
    images = root / "images"
    (images / "p09.png").write_bytes((images / "p00.png").read_bytes())  # p00 is Men
    (images / "p10.png").write_bytes((images / "p00.png").read_bytes())
    with (root / "styles.csv").open("a", newline="") as out:
        csv.writer(out).writerows([["p09", "Women", "Twin"], ["p10", "Men", "Twin"]])
    context = _context(tmp_path, pixel_encoder)
    for _ in index_catalogue(context, db_session, read_catalogue(root).items):
        pass
    table = _table(db_session)
    listed = {a for a, _, _, _ in table} | {b for _, _, b, _ in table}
    # p00 stands for the photo among men, p09 among women; p10 (a man) is p00's twin.
    assert {"p00", "p09"} <= listed and "p10" not in listed
    genders = _genders(db_session)
    assert all(genders[a] == genders[b] for a, _, b, _ in table)


@pytest.fixture
def grouped_app(tmp_path: Path, pixel_encoder: PixelEncoder) -> tuple[Flask, str]:
    from web import create_app

    root = _catalogue(tmp_path, count=12)
    url = f"sqlite:///{tmp_path / 'grouped.db'}"
    upgrade(url)
    engine = make_engine(url)
    context = _context(tmp_path, pixel_encoder)
    with make_sessionmaker(engine)() as session:
        for _ in index_catalogue(context, session, read_catalogue(root).items):
            session.commit()
    engine.dispose()
    return create_app({"database_url": url, "media_dir": tmp_path / "media"}), url


def test_api_page_and_command_say_which_grouping(grouped_app: tuple[Flask, str]) -> None:
    app, url = grouped_app
    client = app.test_client()
    response = client.get("/api/products/p01/similar")
    conforms(described(app), "/api/products/{product_id}/similar", response)
    body = response.get_json()
    assert body["grouping"] == {"by": ["gender"], "group": {"gender": "Women"}}
    assert {n["gender"] for n in body["neighbours"]} == {"Women"}
    page = client.get("/products/p01").get_data(as_text=True)
    said = " ".join(page.split())
    assert "grouped by gender: these come only from products with the same gender (" in said
    assert '<a href="/?gender=Women">Women</a>).' in said

    result = CliRunner().invoke(main, ["similar", "p01"], env={"LOOKALIKE_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert "within gender = Women" in result.output
    as_json = CliRunner().invoke(
        main, ["similar", "p01", "--json"], env={"LOOKALIKE_DATABASE_URL": url}
    )
    assert json.loads(as_json.stdout)["grouping"]["group"] == {"gender": "Women"}
    app.extensions["lookalike.engine"].dispose()


def test_the_setting_is_checked() -> None:
    assert get_settings(partition=" gender , masterCategory ").partition_columns == (
        "gender",
        "masterCategory",
    )
    assert get_settings(partition="").partition_columns == ()
    for bad in ("gender,gender", "a|b", "gender,,x"):
        with pytest.raises(ValueError):
            get_settings(partition=bad)
    space = Space("m", "pca64", ("gender", "season"))
    assert Space.parse(space.id) == space and space.id == "m|pca64|by:gender,season"
    assert Space.parse("m|by:gender") == Space("m", None, ("gender",))
    assert Space.parse("m|pca64") == Space("m", "pca64")
