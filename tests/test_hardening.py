"""Issue 12, items 11 to 13: response headers, photos' media types and cross-site writes;
queue and command-line edge cases; weights files as Keras 3 writes them."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import text

from cli.main import is_loopback_bind, main
from core.db import make_engine, make_sessionmaker
from core.errors import InvalidImage, WeightsUnavailable
from core.images import check_image, load_rgb
from core.jobs import JobKind, create_job
from core.model_spec import DEFAULT_CONV_LAYERS, resolve_spec, weights_have_top
from core.models import ImageError, Product
from core.settings import get_settings
from migrations import upgrade
from tests.conftest import PG_ADMIN_URL, ROOT, Workers, remove_queue_keys
from tests.test_pages import BROWSER, Tags
from tests.test_pages import catalogue as catalogue
from tests.test_pages import pages as pages
from tests.test_pages import pages_app as pages_app

CHROME = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
}
SAFARI = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def photo(fmt: str, size: tuple[int, int] = (48, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, fmt)
    return buffer.getvalue()


def upload(client: FlaskClient, product_id: str, data: bytes, name: str, **headers: str) -> int:
    response = client.post(
        "/api/products",
        data={"images": (io.BytesIO(data), name), "id": product_id},
        headers=headers,
    )
    return response.status_code


# --- item 11: headers, media types, cross-site writes, public binds ------------------------


def assert_hardened(headers: dict[str, str] | object) -> None:
    csp = headers["Content-Security-Policy"]  # type: ignore[index]
    assert headers["X-Content-Type-Options"] == "nosniff"  # type: ignore[index]
    assert headers["X-Frame-Options"] == "DENY"  # type: ignore[index]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_every_response_carries_the_security_headers(pages: FlaskClient) -> None:
    for url, status in [
        ("/", 200),
        ("/products/2049", 200),
        ("/search", 200),
        ("/jobs", 200),
        ("/api/products", 200),
        ("/api/products/2049", 200),
        ("/api/products/2049/similar", 200),
        ("/images/2049", 200),
        ("/static/lookalike.js", 200),
        ("/api/products/none-such", 404),
        ("/nowhere", 404),
    ]:
        response = pages.get(url, headers=BROWSER)
        assert response.status_code == status, url
        assert_hardened(response.headers)
        # Each header once: appended to every response, never twice.
        assert len(response.headers.getlist("Content-Security-Policy")) == 1


def test_pages_work_under_the_policy_no_inline_script_or_style(
    pages: FlaskClient,
) -> None:
    """The policy allows no inline script or style: the pages must have none, the product
    page's score bars included (they are SVG whose width is an attribute)."""
    for url in ["/", "/products/2049", "/search", "/add", "/jobs", "/?gender=Men"]:
        html = pages.get(url, headers=BROWSER).get_data(as_text=True)
        assert "<style" not in html, url
        for tag, attrs in Tags(html).tags:
            assert "style" not in attrs, (url, tag, attrs)
            assert not [name for name in attrs if name.startswith("on")], (url, tag, attrs)
            if tag == "script":
                assert attrs.get("src", "").startswith("/static/"), (url, attrs)
    product = pages.get("/products/2049", headers=BROWSER).get_data(as_text=True)
    assert len(Tags(product).all("rect", height="100%")) == 10


def test_photos_are_served_with_their_real_media_type(
    pages_app: Flask,
    pages: FlaskClient,
    tmp_path: Path,
) -> None:
    """By content, not by name: a catalogue file without a suffix, or with a wrong one."""
    files = {
        "nosuffix-png": (tmp_path / "photo", photo("PNG"), "image/png"),
        "lying-gif": (tmp_path / "photo.jpg", photo("GIF"), "image/gif"),
        "odd-webp": (tmp_path / "photo.img", photo("WEBP"), "image/webp"),
        "plain-jpeg": (tmp_path / "photo.jpeg", photo("JPEG"), "image/jpeg"),
    }
    with pages_app.extensions["lookalike.sessions"]() as session:
        for product_id, (path, data, _type) in files.items():
            path.write_bytes(data)
            session.add(Product(id=product_id, meta={}, image_path=str(path), content_hash="1"))
        session.commit()
    for product_id, (_path, data, mimetype) in files.items():
        response = pages.get(f"/images/{product_id}")
        assert response.status_code == 200
        assert response.mimetype == mimetype, product_id
        assert response.data == data
        assert_hardened(response.headers)
    # A stored file that went missing is a 404, not a 500.
    files["plain-jpeg"][0].unlink()
    assert pages.get("/images/plain-jpeg").status_code == 404


def test_cross_site_writes_are_refused_without_a_token(client: FlaskClient) -> None:
    jpeg = photo("JPEG")
    # Another site's page, as a modern browser says it (Sec-Fetch-Site) or an older one
    # (only Origin): 403 JSON, nothing stored.
    for headers in [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://shop.localhost"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:9999"},
    ]:
        response = client.post(
            "/api/products",
            data={"images": (io.BytesIO(jpeg), "a.jpg"), "id": "victim"},
            headers=headers,
        )
        assert response.status_code == 403, headers
        assert response.json is not None
        assert response.json["error"]["code"] == "cross_site_request"
        deleted = client.delete("/api/products/anything", headers=headers)
        assert deleted.status_code == 403, headers
        assert client.post("/api/search", headers=headers).status_code == 403
    assert client.get("/api/products/victim").status_code == 404
    # Reads stay open to anyone: a storefront on another origin reads lookalikes.
    listed = client.get("/api/products", headers={"Origin": "https://evil.example"})
    assert listed.status_code == 200
    # The pages' own fetch() (same origin) and clients that are not browsers still write.
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert upload(client, "mine", jpeg, "a.jpg", **own) == 202
    assert upload(client, "older", jpeg, "b.jpg", Origin="http://localhost") == 202
    assert upload(client, "curl", jpeg, "c.jpg") == 202
    assert client.delete("/api/products/mine", headers=own).status_code == 202


def test_with_a_token_writes_need_it_from_anywhere(app: Flask) -> None:
    app.config["LOOKALIKE"] = app.config["LOOKALIKE"].model_copy(update={"api_token": "s3cret"})
    client = app.test_client()
    own = {"Sec-Fetch-Site": "same-origin"}
    assert client.delete("/api/products/x", headers=own).status_code == 401
    bearer = {"Authorization": "Bearer s3cret", "Origin": "https://other.example"}
    assert client.delete("/api/products/x", headers=bearer).status_code == 404


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("127.0.0.2:80", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("unix:/run/lookalike.sock", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        (":8000", False),
        ("192.168.1.5:8000", False),
        ("shop.example.com:80", False),
    ],
)
def test_which_binds_are_loopback(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback


def test_serve_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"LOOKALIKE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "LOOKALIKE_API_TOKEN": ""}
    result = runner.invoke(main, ["serve", "--bind", "0.0.0.0:8000"], env=env)
    assert result.exit_code == 2
    assert "LOOKALIKE_API_TOKEN" in result.output and "--open-writes" in result.output
    assert not (tmp_path / "x.db").exists()  # refused before touching anything


# --- item 12: queue and command-line edge cases --------------------------------------------


def test_index_of_an_empty_folder_finishes_on_the_workers(
    workers: Workers, service_env: dict[str, str], tmp_path: Path
) -> None:
    workers.start(1)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "index", str(empty)],
        env=service_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 photos in" in done.stdout
    assert "embedded 0" in done.stdout and "succeeded" in done.stdout


def test_db_upgrade_of_a_missing_database_is_one_line() -> None:
    missing = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/lookalike_missing_{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"LOOKALIKE_DATABASE_URL": missing})
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot open the database")
    assert "does not exist" in lines[0]


@pytest.fixture
def errors_db(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A SQLite database with three jobs: two with image errors, one with none."""
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        jobs = [create_job(session, JobKind.INDEX) for _ in range(3)]
        for number, job in enumerate(jobs[:2]):
            session.add(
                ImageError(
                    job_id=job.id,
                    product_id=f"p{number}",
                    path=f"/x/{number}.jpg",
                    message=f"truncated image {number}",
                )
            )
        session.commit()
        ids = [job.id for job in jobs]
    engine.dispose()
    yield url, ids


def test_errors_finds_a_job_by_its_short_id(errors_db: tuple[str, list[str]]) -> None:
    url, (first, second, clean) = errors_db
    runner = CliRunner()
    env = {"LOOKALIKE_DATABASE_URL": url}

    short = runner.invoke(main, ["errors", "--job", first[:8]], env=env)
    assert short.exit_code == 0
    assert short.stdout == "p0\t/x/0.jpg\ttruncated image 0\n"
    whole = runner.invoke(main, ["errors", "--job", second.upper()], env=env)
    assert whole.stdout == "p1\t/x/1.jpg\ttruncated image 1\n"

    unknown = runner.invoke(main, ["errors", "--job", "zz%_"], env=env)
    assert unknown.exit_code == 1
    assert "no job with id 'zz%_'" in unknown.output

    none = runner.invoke(main, ["errors", "--job", clean[:8]], env=env)
    assert none.exit_code == 0 and none.stdout == ""
    assert f"no image errors recorded for job {clean}" in none.stderr

    everything = runner.invoke(main, ["errors"], env=env)
    assert everything.stdout.count("truncated image") == 2


def test_errors_says_when_there_are_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    result = CliRunner().invoke(main, ["errors"], env={"LOOKALIKE_DATABASE_URL": url})
    assert result.exit_code == 0 and result.stdout == ""
    assert "no image errors recorded for any job" in result.stderr


def test_an_ambiguous_short_id_asks_for_more(errors_db: tuple[str, list[str]]) -> None:
    url, (_first, _second, clean) = errors_db
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        other = create_job(session, JobKind.INDEX).id
        session.commit()
    with engine.begin() as connection:
        for job_id, new_id in ((clean, "feedface-0001"), (other, "feedface-0002")):
            connection.execute(
                text("UPDATE jobs SET id = :new WHERE id = :old"), {"new": new_id, "old": job_id}
            )
    engine.dispose()
    result = CliRunner().invoke(
        main, ["errors", "--job", "feedface"], env={"LOOKALIKE_DATABASE_URL": url}
    )
    assert result.exit_code == 1 and "several jobs" in result.output


@pytest.mark.parametrize("headers", [BROWSER, CHROME, SAFARI])
def test_unknown_page_addresses_answer_the_html_error_page(
    pages: FlaskClient,
    headers: dict[str, str],
) -> None:
    for url in ["/nowhere", "/products/", "/products/2049/extra", "/jobs/x", "/catalogue"]:
        response = pages.get(url, headers=headers)
        assert response.status_code == 404, url
        assert response.mimetype == "text/html", url
        assert "<h1>" in response.get_data(as_text=True)
    # The API and clients that are not browsers keep JSON.
    assert pages.get("/api/nowhere", headers=headers).mimetype == "application/json"
    assert pages.get("/nowhere").mimetype == "application/json"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_the_bomb_message_quotes_the_configured_limit() -> None:
    # 400 million pixels: over Pillow's own ceiling, which refuses it before our check.
    bomb = png_header_only(20_000, 20_000)
    for refuse in (check_image, load_rgb):
        with pytest.raises(InvalidImage) as refused:
            refuse(bomb, 1_000_000)
        message = refused.value.message
        assert "400,000,000 pixels" in message and "limit of 1,000,000" in message
        assert str(Image.MAX_IMAGE_PIXELS * 2) not in message.replace(",", "")
    # Under Pillow's ceiling, over ours: the same words.
    with pytest.raises(InvalidImage, match="over the limit of 1,000,000"):
        check_image(png_header_only(2_000, 1_000), 1_000_000)


def test_a_tests_queue_leaves_nothing_in_redis(client: FlaskClient, app: Flask) -> None:
    """A message no worker takes (no worker runs here) stays in the queue until the
    fixtures' teardown removes it, with the queue's bindings; ``service_env`` then asserts
    that nothing naming the queue is left."""
    import redis

    queue = app.config["LOOKALIKE"].queue
    assert upload(client, "waiting", photo("JPEG"), "a.jpg") == 202
    connection = redis.Redis.from_url(app.config["LOOKALIKE"].broker_url)
    try:
        assert connection.llen(queue) == 1
        assert connection.exists(f"_kombu.binding.{queue}")
        assert remove_queue_keys(queue) == []
        assert list(connection.scan_iter(match=f"*{queue}*")) == []
    finally:
        connection.close()


# --- item 13: weights files ---------------------------------------------------------------


def small_vgg(top: bool) -> object:
    """A Keras model laid out as VGG16 (13 convolutions in five blocks, then flatten, fc1,
    fc2, predictions) but a few kilobytes big: Keras 3 stores its weights under the same
    paths as VGG16's."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = inputs
    for block, convs in enumerate([2, 2, 3, 3, 3], start=1):
        for number in range(1, convs + 1):
            x = keras.layers.Conv2D(2, 3, padding="same", name=f"block{block}_conv{number}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    if top:
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(8, name="fc1")(x)
        x = keras.layers.Dense(8, name="fc2")(x)
        x = keras.layers.Dense(4, name="predictions")(x)
    return keras.Model(inputs, x, name="vgg16")


def spec_for(path: Path) -> tuple[tuple[str, ...], int]:
    spec = resolve_spec(get_settings(weights=str(path), layer="auto"))
    return spec.layers, spec.input_size


def test_keras3_weights_with_the_top_index_with_fc2(tmp_path: Path) -> None:
    with_top, without = small_vgg(top=True), small_vgg(top=False)
    with_top.save_weights(tmp_path / "top.weights.h5")  # type: ignore[attr-defined]
    with_top.save(tmp_path / "top.keras")  # type: ignore[attr-defined]
    without.save_weights(tmp_path / "notop.weights.h5")  # type: ignore[attr-defined]
    without.save(tmp_path / "notop.keras")  # type: ignore[attr-defined]

    assert spec_for(tmp_path / "top.weights.h5") == (("fc2",), 224)
    assert spec_for(tmp_path / "top.keras") == (("fc2",), 224)
    assert spec_for(tmp_path / "notop.weights.h5") == (DEFAULT_CONV_LAYERS, 160)
    assert spec_for(tmp_path / "notop.keras") == (DEFAULT_CONV_LAYERS, 160)


def test_real_vgg16_without_top_indexes_with_convolutions(tmp_path: Path) -> None:
    """Keras' own VGG16 (about 60 MB without the top), saved by Keras 3 as a weights file and
    as a .keras model: both resolve to the convolutional layers, and the encoder built from
    the .keras file holds exactly the saved weights."""
    import numpy as np
    from keras.applications import vgg16

    from core.encoder import VGG16Encoder

    model = vgg16.VGG16(weights=None, include_top=False, input_shape=(160, 160, 3))
    model.save_weights(tmp_path / "vgg16.weights.h5")
    model.save(tmp_path / "vgg16.keras")
    assert not weights_have_top(tmp_path / "vgg16.weights.h5")
    assert spec_for(tmp_path / "vgg16.weights.h5") == (DEFAULT_CONV_LAYERS, 160)

    settings = get_settings(weights=str(tmp_path / "vgg16.keras"), precision="float32")
    spec = resolve_spec(settings)
    assert spec.layers == DEFAULT_CONV_LAYERS and spec.weights == "file"
    encoder = VGG16Encoder(spec, max_pixels=1_000_000)
    features = encoder._model.get_layer("vgg16_features")
    for name in ("block1_conv1", "block5_conv3"):
        loaded, saved = features.get_layer(name).get_weights(), model.get_layer(name).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))


def test_a_file_that_is_not_weights_is_one_clear_message(tmp_path: Path) -> None:
    text = tmp_path / "weights.h5"
    text.write_text("not weights at all\n")
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("config.json", "{}")
    for path in (text, archive):
        with pytest.raises(WeightsUnavailable) as refused:
            spec_for(path)
        assert str(path) in refused.value.message
    # Through the command line: one line, exit 1, no traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        "LOOKALIKE_WEIGHTS": str(text),
        "LOOKALIKE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "LOOKALIKE_BROKER_URL": "",
    }
    result = CliRunner().invoke(main, ["index", str(empty)], env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {text} is not a Keras")
