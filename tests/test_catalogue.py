"""Catalogue ingest: the Kaggle layout (with its quirks) and plain folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.catalogue import read_catalogue, read_styles
from core.errors import CatalogueError

HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName"
)


def _photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 8), "white").save(path)


def test_unquoted_commas_in_the_name_are_rejoined(tmp_path: Path) -> None:
    styles = tmp_path / "styles.csv"
    styles.write_text(
        HEADER + "\n"
        "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Blue Jeans\n"
        "12345,Women,Accessories,Bags,Handbags,Red,Fall,2011,Casual,Lino Perros, Red, Handbag\n"
        '"777",Men,Footwear,Shoes,Heels,Black,Fall,2011,Casual,"Quoted, properly"\n'
        "999,Men,Footwear\n"
    )
    rows, bad = read_styles(styles)
    assert rows["12345"]["productDisplayName"] == "Lino Perros, Red, Handbag"
    assert rows["12345"]["articleType"] == "Handbags"
    assert rows["777"]["productDisplayName"] == "Quoted, properly"
    assert rows["39386"]["year"] == "2012"
    assert "999" not in rows and len(bad) == 1 and "line 5" in bad[0]


def test_kaggle_layout_reports_mismatches_without_failing(tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text(
        HEADER
        + "\n1,Men,A,B,Tshirts,Red,S,2012,Casual,One\n2,Men,A,B,Shirts,Red,S,2012,Casual,Two\n"
    )
    _photo(tmp_path / "images" / "1.jpg")
    _photo(tmp_path / "images" / "3.jpg")
    (tmp_path / "images" / "notes.txt").write_text("not a photo")
    catalogue = read_catalogue(tmp_path)
    assert catalogue.layout == "kaggle"
    ids = [item.product_id for item in catalogue.items]
    assert ids == ["1", "3", "notes"]  # every file in images/ is a product photo to try
    assert catalogue.items[0].meta["articleType"] == "Tshirts"
    assert catalogue.items[1].meta == {}
    assert catalogue.rows_without_image == ["2"]
    assert catalogue.images_without_row == ["3", "notes"]
    assert len(list(catalogue.problems())) == 2


def test_plain_folder_uses_file_stems_recursively(tmp_path: Path) -> None:
    _photo(tmp_path / "shoes" / "red-sneaker.png")
    _photo(tmp_path / "bags" / "tote.jpg")
    _photo(tmp_path / "more" / "tote.jpg")
    (tmp_path / "README.txt").write_text("ignored: not an image suffix")
    catalogue = read_catalogue(tmp_path)
    assert catalogue.layout == "folder"
    assert sorted(item.product_id for item in catalogue.items) == ["red-sneaker", "tote"]
    assert catalogue.duplicate_ids == ["tote"]


def test_not_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="not a folder"):
        read_catalogue(tmp_path / "missing")
