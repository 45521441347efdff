"""Server time of the product page, GET /products/<id>, on an indexed fashion-dev catalogue.

Measured with Flask's test client in this process (no network, no browser): the time from the
request to the complete HTML, over many product ids, after one warm-up pass. The catalogue page
(first page, and filtered) is measured the same way for comparison. The photos themselves
(GET /images/<id>) are separate requests and not counted.

    python bench/perf/product_page.py [--database-url URL] [--products 300] [--repeats 3]

Without --database-url, fashion-dev is indexed in-process into a SQLite file first (about
3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flask import Flask

from bench.common import index_in_process, lookalike_env, record, unpacked
from core.models import Neighbour, Product
from web import create_app
from web.api import db

TARGET_MS = 100.0


def _index_fashion_dev(work: Path) -> str:
    url = f"sqlite:///{work / 'lookalike.db'}"
    index_in_process(
        unpacked("fashion-dev", work / "data"), lookalike_env(LOOKALIKE_DATABASE_URL=url)
    )
    return url


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    url = args.database_url or _index_fashion_dev(Path(tempfile.mkdtemp(prefix="lookalike-")))
    # The product page from the read cache (as served), and rendered every time (cache off).
    app = create_app({"database_url": url})
    uncached = create_app({"database_url": url, "read_cache_entries": 0})
    clients = {app: app.test_client(), uncached: uncached.test_client()}
    with app.app_context():
        session = db()
        listed = sorted(session.scalars(select(Neighbour.product_id).distinct()))
        total = session.scalar(select(func.count()).select_from(Product))
        some = session.scalars(select(Product).limit(1)).first()
        article = (some.meta or {}).get("articleType") if some else None
    if not listed:
        sys.exit(f"{url} has no neighbour lists: index a catalogue first")
    ids = random.Random(0).sample(listed, min(args.products, len(listed)))

    def timed(path: str, on: Flask = app) -> float:
        start = time.perf_counter()
        response = clients[on].get(path)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            sys.exit(f"GET {path}: {response.status_code}")
        return elapsed * 1000

    for product_id in ids[:20]:  # warm-up: imports, template compilation, SQLite page cache
        timed(f"/products/{product_id}")
        timed(f"/products/{product_id}", uncached)
    uncached_ms = [timed(f"/products/{pid}", uncached) for _ in range(args.repeats) for pid in ids]
    product_ms = [timed(f"/products/{pid}") for _ in range(args.repeats) for pid in ids]
    pages = ["/", "/?page=7"] + ([f"/?articleType={article}"] if article else [])
    catalogue_ms = {path: [timed(path) for _ in range(30)] for path in pages}
    for each in (app, uncached):
        each.extensions["lookalike.engine"].dispose()

    def row(name: str, times: list[float], target: bool) -> str:
        ordered = sorted(times)
        p99 = _percentile(ordered, 0.99)
        verdict = ("met" if p99 < TARGET_MS else "MISSED") if target else ""
        return (
            f"| {name} | {len(times)} | {statistics.median(times):.1f} ms | {p99:.1f} ms | "
            f"{ordered[-1]:.1f} ms | {'< 100 ms ' + verdict if target else ''} |"
        )

    backend = url.split(":", 1)[0].split("+", 1)[0]
    lines = [
        "| request (server time, Flask test client) | requests | median | p99 | max | target |",
        "|---|---|---|---|---|---|",
        row(
            f"GET /products/<id>, {len(ids)} ids x {args.repeats}, read cache off",
            uncached_ms,
            True,
        ),
        row(
            f"GET /products/<id>, {len(ids)} ids x {args.repeats}, from the read cache "
            "(each id rendered once, on its first request)",
            product_ms,
            True,
        ),
    ]
    lines += [row(f"GET {path} (48 per page)", ms, False) for path, ms in catalogue_ms.items()]
    record(
        f"Product page server time, fashion-dev ({total:,} products) indexed, {backend}",
        "\n".join(lines),
        "One process, warm (20 requests first). The product page is one primary-key read and "
        "one join over the neighbour table, then the template; photos are separate requests. "
        f"Command: `python bench/perf/product_page.py --products {args.products} "
        f"--repeats {args.repeats}"
        + (f" --database-url <{backend}, fashion-dev indexed>`." if args.database_url else "`."),
    )


if __name__ == "__main__":
    main()
