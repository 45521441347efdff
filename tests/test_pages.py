"""The server-rendered pages through Flask's test client (no browser): what a reader without
JavaScript gets, the queries behind it on SQLite and PostgreSQL, and HTML errors for pages
while the API keeps its JSON errors."""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from PIL import Image
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core.catalogue import read_catalogue
from core.catalogue_queries import browse_products, catalogue_filters, jobs_with_errors
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.errors import ProductNotFound
from core.jobs import JobKind, JobState, create_job
from core.lookalikes import product_with_lookalikes
from core.models import Product
from migrations import upgrade
from tests.conftest import SAMPLE_IDS, TSHIRTS, in_process_context

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(attrs.get(k) == v for k, v in wanted.items())
        ]


def styles(catalogue: Path) -> dict[str, dict[str, str]]:
    with (catalogue / "styles.csv").open(newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _index(session: Session, root: Path) -> None:
    items = read_catalogue(root).items
    context = in_process_context(
        PixelEncoder(max_pixels=50_000_000), block_size=64, batch_size=8, decode_workers=1
    )
    for _ in index_catalogue(context, session, items):
        session.flush()


@pytest.fixture
def catalogue(sample_catalogue: Path) -> Path:
    """The twelve sample photos and a truncated one, which indexing records as an error."""
    whole = (sample_catalogue / "images" / "2288.jpg").read_bytes()
    (sample_catalogue / "images" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    return sample_catalogue


@pytest.fixture
def pages_app(catalogue: Path, tmp_path: Path) -> Iterator[Flask]:
    """The app over a SQLite file indexed with the fast pixel encoder: real photos and their
    metadata, real neighbour lists, one index job with one failed photo, and one product
    that has no vector."""
    from web import create_app

    url = f"sqlite:///{tmp_path / 'pages.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        _index(session, catalogue)
        lone = catalogue / "lone.jpg"
        shutil.copy(catalogue / "images" / "3168.jpg", lone)
        session.add(Product(id="lone", meta={}, image_path=str(lone), content_hash="0" * 64))
        session.commit()
    engine.dispose()
    app = create_app({"database_url": url, "media_dir": tmp_path / "media"})
    yield app
    app.extensions["lookalike.engine"].dispose()


@pytest.fixture
def pages(pages_app: Flask) -> FlaskClient:
    return pages_app.test_client()


def page(client: FlaskClient, url: str) -> str:
    response = client.get(url, headers=BROWSER)
    assert response.status_code == 200, (url, response.status_code)
    assert response.content_type.startswith("text/html")
    return response.get_data(as_text=True)


def assert_images_accessible(html: str) -> None:
    images = Tags(html).all("img")
    assert images
    for attrs in images:
        assert attrs.get("alt"), attrs  # every photo named, for screen readers
        assert attrs.get("loading") == "lazy", attrs
        assert attrs.get("width") and attrs.get("height"), attrs  # no layout jumps


# --- queries, on SQLite and PostgreSQL ----------------------------------------------------


def test_catalogue_queries(db_session: Session, catalogue: Path) -> None:
    _index(db_session, catalogue)
    rows = styles(catalogue)
    filters = {f.column: f for f in catalogue_filters(db_session)}
    assert list(filters) == ["gender", "masterCategory", "articleType", "baseColour"]
    expected = Counter(rows[pid]["articleType"] for pid in SAMPLE_IDS)
    assert {o.value: o.count for o in filters["articleType"].options} == expected
    counts = [o.count for o in filters["articleType"].options]
    assert counts == sorted(counts, reverse=True)
    assert catalogue_filters(db_session, fields=["noSuchColumn"]) == []

    tees = browse_products(db_session, {"articleType": "Tshirts"}, page=1, per_page=5)
    assert tees.total == expected["Tshirts"] and tees.pages == -(-tees.total // 5)
    assert [p.id for p in tees.items] == sorted(p.id for p in tees.items)
    assert all(p.meta["articleType"] == "Tshirts" for p in tees.items)
    last = browse_products(db_session, {"articleType": "Tshirts"}, page=99, per_page=5)
    assert last.page == tees.pages and last.items
    everything = browse_products(db_session, {}, page=1, per_page=100)
    assert everything.total == len(SAMPLE_IDS) + 1  # the broken photo is a product too
    none = browse_products(db_session, {"gender": "Martian"}, page=1, per_page=5)
    assert (none.total, none.items, none.pages) == (0, [], 1)

    view = product_with_lookalikes(db_session, TSHIRTS[0])
    assert [n.rank for n in view.neighbours] == list(range(1, 11)) and view.reason is None
    broken = product_with_lookalikes(db_session, "broken")
    assert broken.neighbours == [] and "no vector" in (broken.reason or "")
    assert "its photo could not be indexed (truncated image" in (broken.reason or "")
    with pytest.raises(ProductNotFound):
        product_with_lookalikes(db_session, "nope")

    (item,) = jobs_with_errors(db_session)
    assert item.state == "succeeded" and [e.product_id for e in item.errors] == ["broken"]
    duration = item.duration()
    assert duration is not None and duration >= 0


# --- pages --------------------------------------------------------------------------------


def test_catalogue_page_filters_and_pages_without_javascript(
    pages: FlaskClient, catalogue: Path
) -> None:
    rows = styles(catalogue)
    html = page(pages, "/")
    assert "<script" not in html  # reading needs no JavaScript
    assert_images_accessible(html)
    tags = Tags(html)
    links = {a["href"] for a in tags.all("a")}
    assert {f"/products/{pid}" for pid in SAMPLE_IDS} <= links
    for pid in SAMPLE_IDS:
        assert escape(rows[pid]["productDisplayName"]) in html
    selects = [s["name"] for s in tags.all("select")]
    assert selects == ["gender", "masterCategory", "articleType", "baseColour"]
    assert 'for="go-id"' in html and 'for="filter-articleType"' in html  # labelled controls

    tees = page(pages, "/?articleType=Tshirts&gender=")
    shown = {a["href"] for a in Tags(tees).all("a") if (a["href"] or "").startswith("/products/")}
    expected = {pid for pid in SAMPLE_IDS if rows[pid]["articleType"] == "Tshirts"}
    assert shown == {f"/products/{pid}" for pid in expected}
    assert re.search(r'<option value="Tshirts"\s+selected', tees)

    first = page(pages, "/?per_page=5")
    assert "page 1 of 3" in first and 'href="/?page=2&amp;per_page=5"' in first
    last = page(pages, "/?per_page=5&page=3")
    assert 'rel="prev"' in last and 'rel="next"' not in last
    assert "page 3 of 3" in page(pages, "/?per_page=5&page=40")  # past the end: last page
    assert "page 1 of 3" in page(pages, "/?per_page=5&page=zero")  # mangled: first page
    assert "No products match" in page(pages, "/?gender=Martian")

    response = pages.get("/go?id=+2049+")
    assert response.status_code == 302 and response.location.endswith("/products/2049")
    assert pages.get("/go?id=").location.endswith("/")


def test_product_page_shows_lookalikes_with_scores(pages: FlaskClient, catalogue: Path) -> None:
    rows = styles(catalogue)
    product_id = TSHIRTS[0]
    html = page(pages, f"/products/{product_id}")
    # Reading needs no script: the one there is deferred and drives only the edit controls.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/lookalike.js" defer>']
    assert_images_accessible(html)
    tags = Tags(html)
    name = rows[product_id]["productDisplayName"]
    assert f"<h1>{escape(name)}</h1>" in html
    (photo,) = [i for i in tags.all("img", alt=name) if i["class"] == "product-photo"]
    assert (photo["src"] or "").startswith(f"/images/{product_id}?w=240&v=")
    assert " 2x" in (photo["srcset"] or "") and "w=480" in (photo["srcset"] or "")
    for field in ("gender", "articleType", "baseColour", "season"):
        assert rows[product_id][field] in html
    # The breadcrumb narrows the catalogue one level at a time.
    assert 'href="/?gender=Men&amp;masterCategory=Apparel"' in html

    lookalikes = html.split('aria-label="Lookalikes"', 1)[1]
    hrefs = re.findall(r'<a href="/products/([^"]+)"', lookalikes)
    scores = [float(s) for s in re.findall(r'class="score-value">(-?[\d.]+)<', lookalikes)]
    widths = [float(w) for w in re.findall(r'<rect width="([\d.]+)%"', lookalikes)]
    assert len(hrefs) == len(scores) == len(widths) == 10
    assert product_id not in hrefs and len(set(hrefs)) == 10
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # The bar is the cosine as a share of its width; below zero (pixel vectors can be) it is empty.
    assert widths == pytest.approx([max(s, 0) * 100 for s in scores], abs=0.06)
    cards = Tags(lookalikes).all("img")
    for pid in hrefs:
        alts = [i["alt"] for i in cards if (i["src"] or "").startswith(f"/images/{pid}?w=180&v=")]
        assert alts == [rows[pid]["productDisplayName"]]
    assert pages.get(f"/images/{hrefs[0]}").status_code == 200

    # The thumbnail a card shows: WebP, 180 wide, made once, cached for a year by its address.
    src = next(i["src"] for i in cards if (i["src"] or "").startswith(f"/images/{hrefs[0]}?"))
    first = pages.get(src)
    assert first.status_code == 200 and first.mimetype == "image/webp"
    assert "max-age=31536000" in first.headers["Cache-Control"]
    assert "immutable" in first.headers["Cache-Control"] and first.headers["ETag"]
    with Image.open(io.BytesIO(first.data)) as thumb:
        assert thumb.width == 180 and thumb.format == "WEBP"
    again = pages.get(src, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    loose = pages.get(f"/images/{hrefs[0]}?w=360")  # no version: an hour, not a year
    assert loose.status_code == 200 and "max-age=3600" in loose.headers["Cache-Control"]
    for bad in ("181", "0", "x", "99999999999999"):
        assert pages.get(f"/images/{hrefs[0]}?w={bad}").status_code == 400

    # Walk on: a lookalike's own page lists its own lookalikes.
    assert 'aria-label="Lookalikes"' in page(pages, f"/products/{hrefs[0]}")

    lone = page(pages, "/products/lone")
    assert "No lookalikes yet" in lone and "no vector yet" in lone
    assert "waiting to be embedded" in lone
    broken = page(pages, "/products/broken")
    assert "its photo could not be indexed (truncated image" in broken
    # Metadata names read as words.
    assert "<dt>Article type</dt>" in html and "<dt>Base colour</dt>" in html
    assert Tags(lone).all("img", alt="Product lone")  # no name: the alt text says which


def test_jobs_search_and_add_pages(pages: FlaskClient, pages_app: Flask) -> None:
    html = page(pages, "/jobs")
    row = html.split('class="job"', 1)[1].split("</tr>", 1)[0]
    assert "state-succeeded" in row and "1 photo failed" in row
    assert "<strong>broken</strong>" in row and "truncated" in row
    assert re.search(r'<progress max="14" value="14"', row)  # 13 photos, then one block
    assert re.search(r'class="duration">\d+\.\d s<', row)

    search = page(pages, "/search")
    assert 'data-api="/api/search"' in search and 'type="file"' in search
    assert 'for="search-image"' in search and 'role="alert"' in search
    assert "<noscript>" in search and "api-token" not in search
    add = page(pages, "/add")
    assert 'data-api="/api/products"' in add and "multiple" in add and "api-token" not in add

    pages_app.config["LOOKALIKE"] = pages_app.config["LOOKALIKE"].model_copy(
        update={"api_token": "s3cret"}
    )
    assert 'id="api-token"' in page(pages, "/search")
    assert 'id="api-token"' in page(pages, "/add")


def test_pages_answer_errors_in_html_and_the_api_in_json(pages: FlaskClient) -> None:
    for headers in (BROWSER, {}):
        response = pages.get("/products/nope", headers=headers)
        assert response.status_code == 404 and response.content_type.startswith("text/html")
        html = response.get_data(as_text=True)
        assert "404" in html and "no product with id &#39;nope&#39;" in html
        assert "Traceback" not in html and 'href="/"' in html

    # An unknown address: a page for a browser, JSON for every other client.
    response = pages.get("/no/such/page", headers=BROWSER)
    assert response.status_code == 404 and response.content_type.startswith("text/html")
    response = pages.get("/no/such/page")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    response = pages.post("/products/2049", headers=BROWSER)
    assert response.status_code == 405 and response.content_type.startswith("text/html")

    # The API, and the photos, keep JSON whatever the client accepts.
    for url in ("/api/products/nope", "/api/nope", "/images/nope", "/api/jobs/nope"):
        response = pages.get(url, headers=BROWSER)
        assert response.status_code == 404, url
        assert set(response.get_json()["error"]) == {"code", "message"}, url
    response = pages.get("/api/products?page=0", headers=BROWSER)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"


def test_products_list_in_natural_id_order(db_session: Session) -> None:
    ids = ["10000", "1855", "2", "p10", "p2", "a-1", "10", "p2b", "x"]
    for pid in ids:
        db_session.add(Product(id=pid, meta={}, image_path=f"/{pid}.jpg", content_hash=pid))
    db_session.flush()
    listed = browse_products(db_session, {}, page=1, per_page=50)
    assert [p.id for p in listed.items] == [
        "2",
        "10",
        "1855",
        "10000",
        "a-1",
        "p2",
        "p2b",
        "p10",
        "x",
    ]


def test_the_sort_key_migration_fills_existing_products(tmp_path: Path) -> None:
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0007")
    engine = make_engine(url)
    with engine.begin() as connection:
        for pid in ("10", "9"):
            connection.execute(
                text(
                    "INSERT INTO products (id, meta, image_path, content_hash, created_at, "
                    "updated_at) VALUES (:id, '{}', '/x', :id, '2026-01-01', '2026-01-01')"
                ),
                {"id": pid},
            )
    upgrade(url)
    with make_sessionmaker(engine)() as session:
        assert [p.id for p in browse_products(session, {}, 1, 10).items] == ["9", "10"]
    engine.dispose()


def test_jobs_page_pages_and_filters(pages: FlaskClient, pages_app: Flask) -> None:
    with pages_app.extensions["lookalike.sessions"]() as session:
        for n in range(35):
            job = create_job(session, JobKind.SEARCH, {}, total=1)
            if n % 5 == 0:
                job.state = JobState.FAILED.value
                job.error = f"failed number {n}"
        session.commit()
    first = page(pages, "/jobs")
    assert "36 jobs" in first and "Page 1 of 2" in first and first.count('class="job"') == 30
    assert 'rel="next" href="/jobs?page=2"' in first
    second = page(pages, "/jobs?page=2")
    assert second.count('class="job"') == 6 and "Index" in second  # the oldest: the index job
    failed = page(pages, "/jobs?state=failed&kind=search")
    assert "7 jobs" in failed and failed.count('class="job"') == 7
    assert failed.count("state-failed") == 7 and '<option value="failed" selected>' in failed
    index = page(pages, "/jobs?kind=index")
    assert re.search(r">1 job\s*·", index)
    assert index.count('class="job"') == 1
    # A mangled filter shows every job, as a mangled page number shows the first page.
    assert "36 jobs" in page(pages, "/jobs?state=sideways&kind=nothing&page=x")
    assert "No jobs match" in page(pages, "/jobs?state=running")
