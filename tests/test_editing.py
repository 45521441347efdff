"""Editing the catalogue (issue 14, item 4): a CSV of metadata beside the photos, through the
same API as every upload; the add page offers the catalogue's own fields and values, and a
product page carries its replace and delete controls. The browser side is in test_browser."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.errors import InvalidMetadata
from core.uploads import MetadataSheet, Upload
from tests.test_openapi import conforms, described
from tests.test_pages import Tags, catalogue, page, pages_app  # noqa: F401 (fixtures)
from tests.test_service import photos

SHEET = b"""id,articleType,baseColour,productDisplayName
white-tee,Tshirts,White,White tee from the sheet
1855,Tshirts,,Grey tee from the sheet
ghost,Shoes,Black,No photo for this one
bad id!,Shoes,Black,Refused
"""


def _upload(name: str, product_id: str | None = None, meta: dict[str, Any] | None = None) -> Upload:
    return Upload(name, b"", product_id, meta)


def test_a_sheet_gives_each_photo_its_row_under_the_photos_own_fields() -> None:
    sheet = MetadataSheet.parse(SHEET, "sheet.csv")
    # An empty cell gives no value; the unusable id is a problem, not a row.
    grey = {"articleType": "Tshirts", "productDisplayName": "Grey tee from the sheet"}
    assert sheet.rows["1855"] == grey
    assert "bad id!" not in sheet.rows and len(sheet.problems) == 1

    uploads = [
        _upload("tee.jpg", "white-tee", {"baseColour": "Off-white"}),  # by id; its own field wins
        _upload("1855.jpg"),  # by file name
        _upload("other.jpg"),  # no row: as it came
    ]
    merged, refused = sheet.applied(uploads)
    assert merged[0].meta == {
        "articleType": "Tshirts",
        "baseColour": "Off-white",
        "productDisplayName": "White tee from the sheet",
    }
    assert merged[1].meta == sheet.rows["1855"] and merged[1].product_id is None
    assert merged[2] == uploads[2]
    said = [(r.filename, r.message) for r in refused]
    assert said[0][0] == "sheet.csv" and "line 5" in said[0][1]
    assert said[1] == ("sheet.csv", "row for 'ghost' matches no photo in this request")

    for bad in (b"", b"name,articleType\nx,Shoes\n"):
        with pytest.raises(InvalidMetadata, match="metadata CSV"):
            MetadataSheet.parse(bad, "sheet.csv")


def _post(client: FlaskClient, fashion_dev: Path, sheet: bytes, **extra: Any) -> Any:
    paths = photos(fashion_dev, ["1855", "2049"])
    data: dict[str, Any] = {
        "images": [(io.BytesIO(p.read_bytes()), p.name) for p in paths],
        "id": ["", "white-tee"],
        "metadata_csv": (io.BytesIO(sheet), "sheet.csv"),
        **extra,
    }
    return client.post("/api/products", data=data, content_type="multipart/form-data")


def test_the_api_takes_a_metadata_csv_beside_the_photos(
    client: FlaskClient, app: Flask, fashion_dev: Path
) -> None:
    # No id column: the whole request is refused and nothing is registered.
    response = _post(client, fashion_dev, b"sku,articleType\n1855,Tshirts\n")
    conforms(described(app), "/api/products", response)
    assert response.status_code == 400
    assert "no 'id' column" in response.get_json()["error"]["message"]
    assert client.get("/api/products/1855").status_code == 404

    response = _post(client, fashion_dev, SHEET, metadata=["", '{"usage": "Casual"}'])
    conforms(described(app), "/api/products", response)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["product_ids"] == ["1855", "white-tee"]
    assert [r["file"] for r in body["rejected"]] == ["sheet.csv", "sheet.csv"]
    assert "ghost" in body["rejected"][1]["error"]
    grey = client.get("/api/products/1855").get_json()
    assert grey["articleType"] == "Tshirts"
    assert grey["productDisplayName"] == "Grey tee from the sheet"
    assert "baseColour" not in grey
    white = client.get("/api/products/white-tee").get_json()
    assert white["usage"] == "Casual" and white["baseColour"] == "White"


@pytest.fixture
def pages_client(pages_app: Flask) -> FlaskClient:  # noqa: F811
    return pages_app.test_client()


def test_the_add_page_offers_the_catalogues_fields_and_values(
    pages_client: FlaskClient,
    pages_app: Flask,  # noqa: F811
) -> None:
    html = page(pages_client, "/add")
    fields = [a["data-meta-field"] for a in Tags(html).all("input") if a.get("data-meta-field")]
    # The product page's order; the name is asked per photo, so it is not a shared field.
    assert fields[:3] == ["gender", "masterCategory", "articleType"]
    assert "productDisplayName" not in fields and len(fields) == len(set(fields))
    labels = Tags(html).all("label")
    assert any(a.get("for") == f"meta-{fields.index('articleType') + 1}" for a in labels)
    assert ">Article type</label>" in html
    article = fields.index("articleType") + 1
    assert f'list="meta-{article}-values"' in html
    values = html.split(f'<datalist id="meta-{article}-values">', 1)[1].split("</datalist>", 1)[0]
    assert '<option value="Tshirts">' in values
    assert 'name="metadata_csv"' in html and 'accept=".csv,text/csv"' in html


def test_a_product_page_carries_its_replace_and_delete_controls(
    pages_client: FlaskClient,
    pages_app: Flask,  # noqa: F811
) -> None:
    html = page(pages_client, "/products/2288")
    assert 'data-delete-api="/api/products/2288"' in html and 'data-add-api="/api/products"' in html
    assert 'id="replace-photo"' in html and "Delete product" in html and "api-token" not in html
    pages_app.config["LOOKALIKE"] = pages_app.config["LOOKALIKE"].model_copy(
        update={"api_token": "s3cret"}
    )
    assert 'id="api-token"' in page(pages_client, "/products/3168")
