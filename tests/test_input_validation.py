"""Issue 12, items 3, 4, 7 and 9: one validation of product ids and metadata wherever they
enter (the API, ``styles.csv``, plain folders), and malformed requests answered 4xx, never 500.

The API tests run against PostgreSQL (the ``client`` fixture), where a NUL character in a JSON
value or in a query parameter used to turn into a 500.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core.catalogue import read_catalogue
from core.encoder import PixelEncoder
from core.errors import InvalidMetadata, InvalidProductId
from core.metadata import MAX_BYTES, parse_metadata, validate_metadata, validate_product_id
from core.models import PRODUCT_ID_LENGTH, Neighbour, Product
from tests.conftest import in_process_context

LONG_STEM = "x" * 251  # with ".png", 255 bytes: as long as a file name may be


def _png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _upload(client: FlaskClient, product_id: str, meta: Any = None, raw: str | None = None) -> Any:
    data: dict[str, Any] = {"images": (io.BytesIO(_png()), "photo.png"), "id": product_id}
    if raw is not None or meta is not None:
        data["metadata"] = raw if raw is not None else json.dumps(meta)
    return client.post("/api/products", data=data, content_type="multipart/form-data")


# --- core.metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        ('{"name": "a\\u0000b"}', "NUL"),
        ('{"a\\u0000": "x"}', "NUL"),
        ('{"price": NaN}', "not valid JSON"),
        ('{"price": Infinity}', "not valid JSON"),
        ('{"price": 1e999}', "not valid JSON"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "bytes, over the limit"),
        ('{"a": ' * 200 + "1" + "}" * 200, "nested deeper"),
        ("[" * 1500 + "]" * 1500, "not valid JSON"),
        ('{"id": "1855"}', "reserved"),
        ('{"rank": 1}', "reserved"),
        ('{"score": 1.0}', "reserved"),
        ('{"image_url": "http://evil"}', "reserved"),
        ('{"": 1}', "non-empty text"),
        ('{"name": "\\ud800"}', "not valid JSON"),
        (json.dumps({"name": "x" * 5000}), "characters long"),
        (json.dumps({f"k{n}": "v" * 100 for n in range(200)}), "over the limit"),
        ('{"n": 123456789012345678901234567890}', ""),  # parsed as a float: fine either way
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_metadata_text_that_cannot_be_stored_is_refused(raw: str, phrase: str) -> None:
    if not phrase:
        assert parse_metadata(raw)
        return
    with pytest.raises(InvalidMetadata, match=phrase):
        parse_metadata(raw)


def test_metadata_values_from_python_are_held_to_the_same_rules() -> None:
    good = {"productDisplayName": "Blue jeans", "year": 2012, "sizes": ["S", "M"], "x": None}
    assert validate_metadata(good) is good
    for bad in [
        {"price": float("nan")},
        {"price": float("-inf")},
        {"n": 2**64},
        {"nested": {"deep": {"er": {"and": {"deeper": {"s": {"t": {"i": {"l": 1}}}}}}}}},
        {"when": object()},
        {"tags": [{1: "x"}]},
        {"name": "\udc80"},
    ]:
        with pytest.raises(InvalidMetadata):
            validate_metadata(bad)


def test_product_ids_match_whole_and_fit_the_column() -> None:
    assert validate_product_id("1855") == "1855"
    assert validate_product_id("a" * PRODUCT_ID_LENGTH)
    for bad in ["abc\n", "", "a" * (PRODUCT_ID_LENGTH + 1), LONG_STEM, "-x", "a b", "ab\x00c", "é"]:
        with pytest.raises(InvalidProductId):
            validate_product_id(bad)


# --- catalogue folders and styles.csv --------------------------------------------------------


def _photo(path: Path, colour: tuple[int, int, int] = (10, 120, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 32), colour).save(path)


def test_a_plain_folder_reports_and_skips_file_names_that_are_not_ids(tmp_path: Path) -> None:
    _photo(tmp_path / "good.png")
    _photo(tmp_path / f"{LONG_STEM}.png")
    _photo(tmp_path / "with space.png")
    catalogue = read_catalogue(tmp_path)
    assert [item.product_id for item in catalogue.items] == ["good"]
    problems = list(catalogue.problems())
    assert len(problems) == 1 and problems[0].startswith("2 file names are not usable product ids")
    assert "'with space'" in problems[0] and "xxx..." in problems[0]


def test_styles_rows_with_unusable_ids_or_metadata_are_reported(tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text(
        "id,gender,score,productDisplayName\n"
        "1,Men,9,Plain name\n"
        "2,Wo\x00men,9,Nul inside\n"
        f"3,Men,9,{'y' * 5000}\n"
        f"{'7' * 200},Men,9,Too long an id\n",
        encoding="utf-8",
    )
    for stem in ("1", "2", "3"):
        _photo(tmp_path / "images" / f"{stem}.jpg")
    catalogue = read_catalogue(tmp_path)
    meta = {item.product_id: item.meta for item in catalogue.items}
    # The reserved column is ignored; rows whose metadata cannot be stored keep their photo.
    assert meta == {"1": {"gender": "Men", "productDisplayName": "Plain name"}, "2": {}, "3": {}}
    bad = catalogue.bad_rows
    assert len(bad) == 4, bad
    assert "column 'score' ignored" in bad[0] and "reserved" in bad[0]
    assert "line 3" in bad[1] and "NUL" in bad[1]
    assert "line 4" in bad[2] and "characters long" in bad[2]
    assert "line 5" in bad[3] and "invalid product id" in bad[3]
    assert catalogue.images_without_row == [] and catalogue.rows_without_image == []


def test_index_skips_a_251_character_stem_and_indexes_the_rest(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    """On PostgreSQL the long id used to abort the whole index (varchar(128))."""
    _photo(tmp_path / "a.png", (200, 10, 10))
    _photo(tmp_path / "b.png", (10, 200, 10))
    _photo(tmp_path / f"{LONG_STEM}.png", (10, 10, 200))
    catalogue = read_catalogue(tmp_path)
    context = in_process_context(pixel_encoder, neighbours=1, block_size=5, batch_size=4)
    *_, job = index_catalogue(context, db_session, catalogue.items)
    assert job.error is None
    assert list(db_session.scalars(select(Product.id).order_by(Product.id))) == ["a", "b"]
    assert len(catalogue.invalid_ids) == 1


# --- the API and the pages -------------------------------------------------------------------


def _assert_listing_answers(client: FlaskClient) -> None:
    for url in ["/", "/?gender=Men", "/api/products", "/api/products?gender=Men"]:
        response = client.get(url)
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])


def test_bad_metadata_is_refused_and_cannot_break_the_catalogue(client: FlaskClient) -> None:
    assert _upload(client, "good", {"gender": "Men", "season": "Summer"}).status_code == 202
    for raw in [
        '{"gender": "Men\\u0000"}',
        '{"gen\\u0000der": "Men"}',
        '{"price": NaN}',
        '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "[" * 100_000,
        '{"id": "1855", "rank": 1, "score": 1.0}',
    ]:
        response = _upload(client, "bad", raw=raw)
        # 100,000 levels is 600 kB: over the form's own field limit before it is parsed.
        expected = (400, "bad_request") if len(raw) < 500_000 else (413, None)
        error = response.get_json()["error"]
        assert (response.status_code, expected[1] and error["code"]) == expected, (raw[:40], error)
        assert client.get("/api/products/bad").status_code == 404  # nothing half-stored
        _assert_listing_answers(client)
    assert client.get("/api/products?gender=Men").get_json()["total"] == 1


def test_metadata_cannot_shadow_the_services_fields(app: Flask, client: FlaskClient) -> None:
    """Even metadata stored before the validation (as here, straight into the table) cannot
    change a response's id, image address, rank or score."""
    shadow = {"id": "1855", "image_url": "http://evil/x.jpg", "rank": 1, "score": 1.0}
    session: Session = app.extensions["lookalike.sessions"]()
    with session:
        for product_id in ("p1", "p2"):
            session.add(
                Product(
                    id=product_id,
                    meta={**shadow, "name": product_id},
                    image_path="/x.png",
                    content_hash="0" * 64,
                )
            )
        session.flush()
        session.add(
            Neighbour(product_id="p1", rank=7, neighbour_id="p2", score=0.25, space_id="test")
        )
        session.commit()
    body = client.get("/api/products/p1").get_json()
    assert body["id"] == "p1" and body["image_url"].endswith("/images/p1")
    assert body["name"] == "p1"
    listed = client.get("/api/products").get_json()["items"]
    assert [item["id"] for item in listed] == ["p1", "p2"]
    similar = client.get("/api/products/p1/similar").get_json()
    assert similar["product"]["id"] == "p1"
    [neighbour] = similar["neighbours"]
    assert (neighbour["id"], neighbour["rank"], neighbour["score"]) == ("p2", 7, 0.25)


def test_a_row_stored_with_a_nul_before_the_checks_cannot_break_the_catalogue(
    app: Flask, client: FlaskClient
) -> None:
    """PostgreSQL fails a whole query that extracts any field from a row whose JSON holds
    an escaped NUL: such a row, written before the checks, is left out of filters instead."""
    session: Session = app.extensions["lookalike.sessions"]()
    with session:
        for product_id, meta in [
            ("legacy", {"gender": "Men\x00", "a\x00": "x", "season": "Summer"}),
            ("plain", {"gender": "Men", "season": "Summer"}),
        ]:
            session.add(
                Product(id=product_id, meta=meta, image_path="/x.png", content_hash="0" * 64)
            )
        session.commit()
    _assert_listing_answers(client)
    assert client.get("/api/products").get_json()["total"] == 2
    found = client.get("/api/products?gender=Men&season=Summer").get_json()
    assert [item["id"] for item in found["items"]] == ["plain"]
    assert client.get("/api/products?colour=Red").status_code == 400
    assert client.get("/api/products/legacy").status_code == 200
    assert client.get("/products/legacy").status_code == 200


def test_ids_are_checked_whole_and_against_the_column(client: FlaskClient) -> None:
    for product_id in ["abc\n", "a" * (PRODUCT_ID_LENGTH + 1), LONG_STEM]:
        response = _upload(client, product_id)
        assert response.status_code == 400, product_id
        assert "invalid product id" in response.get_data(as_text=True)
    assert client.get("/api/products").get_json()["total"] == 0


def test_nul_bytes_in_paths_answer_not_found(client: FlaskClient) -> None:
    for method, url, code in [
        ("GET", "/api/products/ab%00cd", "product_not_found"),
        ("GET", "/api/products/ab%00cd/similar", "product_not_found"),
        ("DELETE", "/api/products/ab%00cd", "product_not_found"),
        ("GET", "/images/ab%00cd", "product_not_found"),
        ("GET", "/api/jobs/%00", "job_not_found"),
    ]:
        response = client.open(url, method=method)
        assert response.status_code == 404, (url, response.get_data(as_text=True)[:300])
        assert response.get_json()["error"]["code"] == code
    response = client.get("/products/ab%00cd")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "<html" in response.get_data(as_text=True).lower()


def test_page_numbers_take_ascii_digits_only(client: FlaskClient) -> None:
    for query in ["page=%C2%B2", "per_page=%C2%B2", "page=%D9%A3", "page=" + "9" * 5000]:
        response = client.get(f"/api/products?{query}")
        assert response.status_code == 400, query
        assert response.get_json()["error"]["code"] == "bad_request"
        assert client.get(f"/?{query}").status_code == 200, query


def test_unknown_filter_keys_are_refused_with_the_filterable_ones(client: FlaskClient) -> None:
    assert _upload(client, "p1", {"gender": "Men", "season": "Summer"}).status_code == 202
    response = client.get("/api/products?colour=Red")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "unknown filter 'colour'" in message
    assert "season" in message and "gender" in message and "articleType" in message
    # A key some product has is a filter, as is one the pages offer even if none has it yet.
    assert client.get("/api/products?season=Summer").get_json()["total"] == 1
    assert client.get("/api/products?articleType=Shirts").get_json()["total"] == 0
    # A value no metadata can hold: refused by the API, ignored by the pages.
    assert client.get("/api/products?gender=M%00en").status_code == 400
    assert client.get("/?gender=M%00en").status_code == 200
    assert client.get("/api/products?ab%00=1").status_code == 400


def test_a_metadata_size_limit_of_some_kilobytes_still_takes_real_rows() -> None:
    row = {"productDisplayName": "Lino Perros Women Red Handbag " * 10, "gender": "Women"}
    assert len(json.dumps(row)) < MAX_BYTES and validate_metadata(row) is row


def test_odd_addresses_and_queries_answer_below_500(client: FlaskClient) -> None:
    assert _upload(client, "p1", {"gender": "Men"}).status_code == 202
    long = "a" * 300
    for url in [
        "/api/products?page=%FF",
        "/api/products?page=%EF%BC%91",  # a full-width digit
        "/api/products?page=-1",
        "/api/products?per_page=1e3",
        "/api/products?%00=1",
        "/api/products?gender=" + "x" * 10_000,
        f"/api/products?{long}=1",
        f"/api/products/{long}",
        f"/api/products/{long}/similar",
        f"/products/{long}",
        f"/images/{long}",
        "/api/products/%FF%FE",
        "/products/%FF%FE",
        "/api/products/p1%0A",
        "/images/..%2f..%2fetc%2fpasswd",
        "/go?id=%00",
        "/?page=-1&per_page=%00",
        "/?gender=" + "x" * 10_000,
        "/?articleType=%FF",
        "/api/jobs/" + "j" * 100,
    ]:
        response = client.get(url, follow_redirects=True)
        assert response.status_code < 500, (url, response.get_data(as_text=True)[:300])
