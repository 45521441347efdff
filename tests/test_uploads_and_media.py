"""Issue 12, items 6, 8 and 10: uploads are whole (a photo is decoded whole on arrival, a photo
that still fails in the worker is taken back, an upload the queue cannot take leaves nothing,
the same new id posted twice at once is no 500) and the media folder is cleaned (search photos,
deleted products' photos, replaced and failed photos)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.db import make_engine, make_sessionmaker
from core.errors import InvalidImage
from core.media import remove_unreferenced, store
from core.models import Product
from core.uploads import Upload, accept_uploads, check_upload, take_back
from tests.conftest import Workers
from tests.test_service import wait_job

LIMIT = 50_000_000


def _encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _noise(width: int, height: int) -> Image.Image:
    pixels = bytes((x * 7 + y * 13) % 251 for y in range(height) for x in range(width))
    return Image.frombytes("L", (width, height), pixels).convert("RGB")


def media_files(media: Path) -> set[Path]:
    return {p.resolve() for p in media.rglob("*") if p.is_file()} if media.exists() else set()


def post(client: FlaskClient, files: list[tuple[bytes, str]], ids: list[str] | None = None) -> Any:
    data: dict[str, Any] = {"images": [(io.BytesIO(b), name) for b, name in files]}
    if ids is not None:
        data["id"] = ids
    return client.post("/api/products", data=data, content_type="multipart/form-data")


def product_photos(url: str) -> dict[str, str]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = {pid: path for pid, path in session.execute(select(Product.id, Product.image_path))}
    engine.dispose()
    return rows


def eventually(check: Any, timeout: float = 10) -> None:
    """Files are removed just after the job's end commits: give the worker a moment."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.1)


# --- item 8: the arrival check decodes the photo whole ------------------------------------


def test_the_arrival_check_refuses_truncated_and_corrupt_photos(fashion_dev: Path) -> None:
    jpeg = (fashion_dev / "images" / "2288.jpg").read_bytes()
    png = _encode(_noise(200, 150), "PNG")
    assert check_upload(jpeg, 10**7, LIMIT) == "JPEG"
    assert check_upload(png, 10**7, LIMIT) == "PNG"
    # Headers intact, pixel data cut short: identified fine, but not whole.
    with pytest.raises(InvalidImage, match="truncated"):
        check_upload(jpeg[: len(jpeg) // 2], 10**7, LIMIT)
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        check_upload(png[: len(png) // 2], 10**7, LIMIT)
    corrupt_png = png[:-40] + bytes(40)  # the last chunk's data and CRC overwritten
    with pytest.raises(InvalidImage):
        check_upload(corrupt_png, 10**7, LIMIT)
    # A bomb is still refused from its header, before any pixel is decoded.
    with pytest.raises(InvalidImage, match="over the limit"):
        check_upload(_encode(Image.new("L", (6000, 5000)), "PNG"), 10**8, 20_000_000)


def test_a_truncated_photo_is_refused_on_arrival_and_stored_nowhere(
    db_session: Session, fashion_dev: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    whole = (fashion_dev / "images" / "2049.jpg").read_bytes()
    uploads = [Upload("good.jpg", whole), Upload("cut.jpg", whole[: len(whole) // 2])]
    accepted = accept_uploads(db_session, uploads, media, 10**7, LIMIT)
    assert accepted.product_ids == ["good"] and [r.filename for r in accepted.rejected] == [
        "cut.jpg"
    ]
    assert set(db_session.scalars(select(Product.id))) == {"good"}
    assert len(media_files(media)) == 1


# --- item 10: the media folder's own rules -------------------------------------------------


def test_only_unreferenced_files_inside_the_media_folder_are_removed(
    db_session: Session, fashion_dev: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    shared = (fashion_dev / "images" / "2049.jpg").read_bytes()
    other = (fashion_dev / "images" / "3168.jpg").read_bytes()
    accept_uploads(
        db_session, [Upload("a.jpg", shared), Upload("b.jpg", shared)], media, 10**7, LIMIT
    )
    db_session.commit()
    loose = store(media, other, "JPEG").path  # stored, referenced by nothing
    outside = tmp_path / "catalogue.jpg"
    outside.write_bytes(other)
    kept = Path(db_session.scalars(select(Product.image_path)).first() or "")
    assert remove_unreferenced(db_session, media, [kept, loose, outside]) == [loose]
    assert kept.is_file() and outside.is_file() and not loose.exists()


def test_take_back_deletes_created_and_restores_replaced_products(
    db_session: Session, fashion_dev: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    first = (fashion_dev / "images" / "2049.jpg").read_bytes()
    second = (fashion_dev / "images" / "3168.jpg").read_bytes()
    before = accept_uploads(db_session, [Upload("old.jpg", first)], media, 10**7, LIMIT)
    db_session.commit()
    old_path = before.photos["old"].image_path
    uploads = [Upload("old.jpg", second, meta={"n": 2}), Upload("new.jpg", second)]
    accepted = accept_uploads(db_session, uploads, media, 10**7, LIMIT)
    assert accepted.created == ["new"] and accepted.replaced == ["old"]
    taken = take_back(db_session, accepted.as_params(), ["old", "new"])
    db_session.commit()
    assert (taken.removed, taken.restored) == (["new"], ["old"])
    product = db_session.get(Product, "old", populate_existing=True)
    assert product is not None and product.image_path == old_path and product.meta == {}
    assert db_session.get(Product, "new") is None
    assert remove_unreferenced(db_session, media, accepted.written) == accepted.written
    assert media_files(media) == {Path(old_path)}


# --- item 8: the broker is down: 503, and nothing stored -----------------------------------


def test_an_upload_the_queue_cannot_take_leaves_nothing(
    service_env: dict[str, str], fashion_dev: Path, tmp_path: Path
) -> None:
    from web import create_app

    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = tmp_path / "media"
    first = (fashion_dev / "images" / "2049.jpg").read_bytes()
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        accept_uploads(session, [Upload("kept.jpg", first, meta={"a": 1})], media, 10**7, LIMIT)
        session.commit()
    engine.dispose()
    photos_before, files_before = product_photos(url), media_files(media)

    down = create_app(
        {"database_url": url, "broker_url": "redis://127.0.0.1:1/0", "media_dir": media}
    )
    client = down.test_client()
    second = (fashion_dev / "images" / "3168.jpg").read_bytes()
    third = (fashion_dev / "images" / "1855.jpg").read_bytes()
    response = post(client, [(second, "kept.jpg"), (third, "new.jpg")])
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(third), "q.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 503
    down.extensions["lookalike.engine"].dispose()

    # The replaced product has its photo back, the new one is gone, and so are the photos the
    # two requests wrote.
    assert product_photos(url) == photos_before
    assert media_files(media) == files_before


# --- items 6, 8 and 10 with a real worker ----------------------------------------------------


@pytest.fixture
def products_insert_lock(service_env: dict[str, str]) -> Iterator[Any]:
    """Hold back every INSERT into products until the test releases it (reads still pass)."""
    engine = make_engine(service_env["LOOKALIKE_DATABASE_URL"])
    connection = engine.connect()
    connection.execute(text("LOCK TABLE products IN SHARE ROW EXCLUSIVE MODE"))
    yield connection
    connection.close()
    engine.dispose()


def _waiting_inserts(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE 'INSERT INTO products%'"
            )
        )
    engine.dispose()
    return int(waiting or 0)


def test_the_same_new_id_posted_twice_at_once(
    client: FlaskClient,
    workers: Workers,
    service_env: dict[str, str],
    fashion_dev: Path,
    products_insert_lock: Any,
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    bodies = [(fashion_dev / "images" / f"{pid}.jpg").read_bytes() for pid in ("2049", "3168")]
    responses: list[Any] = []

    def upload(body: bytes) -> None:
        responses.append(post(client, [(body, "twin.jpg")]))

    threads = [threading.Thread(target=upload, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    # Both requests have read "no such product" and wait to insert it: release them together.
    eventually(lambda: _waiting_inserts(url) == 2, timeout=30)
    products_insert_lock.rollback()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r.status_code for r in responses) == [202, 202]

    workers.start(1)
    for response in responses:
        assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    photos = product_photos(url)
    assert list(photos) == ["twin"]
    # One photo won; the other's file went once no job could put it back.
    eventually(lambda: media_files(media) == {Path(photos["twin"])})


def _photos(fashion_dev: Path) -> dict[str, bytes]:
    return {
        pid: (fashion_dev / "images" / f"{pid}.jpg").read_bytes()
        for pid in ("2049", "3168", "1855", "2288")
    }


def test_a_photo_the_worker_cannot_index_is_taken_back(
    client: FlaskClient, workers: Workers, service_env: dict[str, str], fashion_dev: Path
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    photo = _photos(fashion_dev)
    # Whole and valid, but over the worker's own pixel limit: not detectable on arrival.
    big = _encode(Image.open(io.BytesIO(photo["2288"])).resize((480, 640)), "JPEG")
    workers.start(1, LOOKALIKE_MAX_IMAGE_PIXELS="200000")

    # A new product with such a photo is removed, its photo too; the others are indexed.
    files = [(photo["2049"], "a.jpg"), (photo["3168"], "c.jpg"), (big, "big.jpg")]
    response = post(client, files)
    assert response.status_code == 202
    job = wait_job(client, response.get_json()["job_id"])
    assert job["state"] == "succeeded"
    assert job["result"]["failed"] == 1 and job["result"]["removed"] == ["big"]
    assert [e["product_id"] for e in job["errors"]] == ["big"]
    assert client.get("/api/products/big").status_code == 404
    assert sorted(product_photos(url)) == ["a", "c"]
    eventually(lambda: media_files(media) == {Path(p) for p in product_photos(url).values()})

    # A replaced photo that cannot be indexed: the product gets its former photo back, and a
    # job where no photo could be indexed fails.
    response = post(client, [(big, "c.jpg")])
    job = wait_job(client, response.get_json()["job_id"])
    assert job["state"] == "failed" and job["result"]["restored"] == ["c"]
    assert client.get("/images/c").data == photo["3168"]
    assert client.get("/api/products/c/similar").status_code == 200
    eventually(lambda: media_files(media) == {Path(p) for p in product_photos(url).values()})


def test_search_deleted_and_replaced_photos_leave_the_media_folder(
    client: FlaskClient, workers: Workers, service_env: dict[str, str], fashion_dev: Path
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    photo = _photos(fashion_dev)
    workers.start(1)
    files = [(photo["2049"], "a.jpg"), (photo["2049"], "b.jpg"), (photo["3168"], "c.jpg")]
    assert wait_job(client, post(client, files).get_json()["job_id"])["state"] == "succeeded"
    assert len(media_files(media)) == 2  # a and b share one file

    # A search photo goes once the search finished (the query is nobody's product).
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(photo["2288"]), "q.jpg")},
        content_type="multipart/form-data",
    )
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    eventually(lambda: len(media_files(media)) == 2)

    # A search with a product's own photo leaves that photo alone.
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(photo["3168"]), "q.jpg")},
        content_type="multipart/form-data",
    )
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    assert client.get("/images/c").data == photo["3168"]

    # A replaced photo that is indexed: the former file goes.
    old_c = product_photos(url)["c"]
    response = post(client, [(photo["1855"], "c.jpg")])
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    eventually(lambda: not Path(old_c).exists())

    # A deleted product's photo goes once no other product uses the same file.
    shared = product_photos(url)["a"]
    job = wait_job(client, client.delete("/api/products/a").get_json()["job_id"])
    assert job["state"] == "succeeded"
    assert Path(shared).is_file()
    job = wait_job(client, client.delete("/api/products/b").get_json()["job_id"])
    assert job["state"] == "succeeded"
    eventually(lambda: media_files(media) == {Path(product_photos(url)["c"])})
