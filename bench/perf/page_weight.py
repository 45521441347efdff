"""Page weight before and after thumbnails, on fashion-dev: what a browser downloads for the
catalogue's first pages and for product pages (the HTML and every photo it shows at 1x and at
2x), against the same pages with every photo sent as the stored original, as pages did
before; and what making a thumbnail costs the first time against serving it after.

The catalogue is indexed in this process with the raw-pixel encoder (lists only decide which
photos a product page shows, not how heavy they are).

    python -m bench.perf.page_weight [--products 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from bench.common import record, unpacked
from cli.in_process import InProcessQueue, index_catalogue
from core.catalogue import read_catalogue
from core.context import Context
from core.db import make_engine
from core.encoder import PixelEncoder
from core.settings import get_settings
from core.space_reader import SqlSpaceReader
from migrations import upgrade
from web import create_app

BROWSER = {"Accept": "text/html"}


class _Images(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []  # (src, the 2x candidate or src)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag != "img" or not values.get("src"):
            return
        src = values["src"] or ""
        double = src
        for candidate in (values.get("srcset") or "").split(","):
            parts = candidate.split()
            if len(parts) == 2 and parts[1] == "2x":
                double = parts[0]
        self.found.append((src, double))


def _bytes(client: FlaskClient, url: str) -> int:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(response.data)


def weigh(client: FlaskClient, url: str) -> dict[str, int]:
    html = client.get(url, headers=BROWSER).get_data(as_text=True)
    images = _Images(html).found
    original = sum(_bytes(client, src.split("?", 1)[0]) for src, _ in images)
    return {
        "html": len(html.encode()),
        "images": len(images),
        "before": len(html.encode()) + original,
        "after_1x": len(html.encode()) + sum(_bytes(client, src) for src, _ in images),
        "after_2x": len(html.encode()) + sum(_bytes(client, double) for _, double in images),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=20, help="product pages weighed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = unpacked("fashion-dev", Path(work))
        url = f"sqlite:///{work}/weight.db"
        upgrade(url)
        settings = get_settings(database_url=url, media_dir=Path(work) / "media", pca_dims=0)
        context = Context.create(
            settings, InProcessQueue(), spaces=SqlSpaceReader(), encoder=PixelEncoder(50_000_000)
        )
        engine = make_engine(url)
        catalogue = read_catalogue(folder)
        with Session(engine) as session:
            for _ in index_catalogue(context, session, catalogue.items):
                session.commit()
        engine.dispose()
        app = create_app({"database_url": url, "media_dir": Path(work) / "media"})
        client = app.test_client()
        ids = random.Random(0).sample([item.product_id for item in catalogue.items], args.products)
        pages = {
            "catalogue (48 cards)": [f"/?page={n}" for n in (1, 2, 3)],
            "product page (photo + 10 lookalikes)": [f"/products/{pid}" for pid in ids],
        }
        # First requests make the thumbnails; the weights below are of the second visit.
        started = time.perf_counter()
        made = sum(weigh(client, u)["images"] for urls in pages.values() for u in urls)
        first = time.perf_counter() - started
        rows = [
            "| page | photos | HTML kB | before: originals kB | after, 1x kB | after, 2x kB "
            "| after / before (1x) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, urls in pages.items():
            found = [weigh(client, u) for u in urls]

            def mean(key: str, found: list[dict[str, int]] = found) -> float:
                return statistics.mean(f[key] for f in found) / 1000

            rows.append(
                f"| {name} | {statistics.mean(f['images'] for f in found):.0f} "
                f"| {mean('html'):.1f} | {mean('before'):.0f} | {mean('after_1x'):.0f} "
                f"| {mean('after_2x'):.0f} | {mean('after_1x') / mean('before'):.2f} |"
            )
        sample = next(
            src
            for src, _ in _Images(
                client.get(pages["catalogue (48 cards)"][0], headers=BROWSER).get_data(as_text=True)
            ).found
        )
        timings = []
        for _ in range(50):
            t = time.perf_counter()
            client.get(sample)
            timings.append((time.perf_counter() - t) * 1000)
        app.extensions["lookalike.engine"].dispose()
    record(
        "Page weight with thumbnails (fashion-dev, 240x320 JPEG originals)",
        "\n".join(rows),
        f"Means over {len(pages['catalogue (48 cards)'])} catalogue pages and {args.products} "
        f"product pages, second visit. The first visit of all of them made their thumbnails "
        f"({made} photos, 1x and 2x) in {first:.1f} s; a thumbnail made before is "
        f"served in {statistics.median(timings):.2f} ms (median of 50, through the app). "
        "Before: the same pages with each photo as the stored original (`/images/<id>`), as "
        "pages sent them until now.",
    )


if __name__ == "__main__":
    main()
