"""Find by name at 44k products: ``browse_products(q=...)`` (the code behind
``GET /api/products?q=`` and the catalogue's search box) on fashion-small's 44,072 products, on
PostgreSQL and on SQLite, side by side with two references measured in the same run: the same
page without a search (the floor: what listing costs anyway), and the same words matched by a
plain ``LIKE`` on the metadata's JSON text, no index (what the search would cost without one).

Only metadata is loaded (``core.products.sync_products``): no photo is embedded, as the search
reads no vector.

    python -m bench.perf.name_search [--repeats 5] [--rounds 40]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from bench.common import create_database, drop_database, record, unpacked
from core.catalogue import read_catalogue
from core.catalogue_queries import browse_products, like_pattern, search_words
from core.db import make_engine
from core.models import Product
from core.products import sync_products
from migrations import upgrade

QUERIES = ("white polo", "shirt", "nike running shoes", "kurta", "watch", "navy blue jeans")
PER_PAGE = 48


def _unindexed(session: Session, query: str) -> int:
    """The same page by LIKE on the metadata's JSON text: a full scan."""
    selected = select(Product)
    for word in search_words(query):
        selected = selected.where(
            func.lower(cast(Product.meta, Text)).like(like_pattern(word), escape="\\")
        )
    total = session.scalar(select(func.count()).select_from(selected.subquery()))
    session.scalars(selected.order_by(Product.sort_key).limit(PER_PAGE)).all()
    return int(total or 0)


def _timed(run: Callable[[], object], rounds: int) -> float:
    """Median milliseconds of ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(url: str, rounds: int) -> dict[str, float]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            found = {q: browse_products(session, {}, 1, PER_PAGE, q).total for q in QUERIES}
            assert all(found[q] == _unindexed(session, q) for q in QUERIES), found
            search = statistics.mean(
                _timed(functools.partial(browse_products, session, {}, 1, PER_PAGE, q), rounds)
                for q in QUERIES
            )
            floor = _timed(lambda: browse_products(session, {}, 1, PER_PAGE), rounds)
            scan = statistics.mean(
                _timed(functools.partial(_unindexed, session, q), max(3, rounds // 8))
                for q in QUERIES
            )
    finally:
        engine.dispose()
    return {"search": search, "floor": floor, "scan": scan, "hits": statistics.mean(found.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        catalogue = read_catalogue(unpacked("fashion-small", Path(work)))
        urls = {"SQLite": f"sqlite:///{work}/search.db", "PostgreSQL": create_database()}
        try:
            for url in urls.values():
                upgrade(url)
                engine = make_engine(url)
                with Session(engine) as session:
                    sync_products(session, catalogue.items)
                    session.commit()
                engine.dispose()
            if "PostgreSQL" in urls:
                pg = make_engine(urls["PostgreSQL"], isolation_level="AUTOCOMMIT")
                with pg.connect() as connection:
                    connection.exec_driver_sql("ANALYZE products")
                pg.dispose()
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            for repeat in range(args.repeats):
                for name, url in urls.items():  # interleaved, so drift hits both alike
                    runs[name].append(measure(url, args.rounds))
                    print(repeat, name, runs[name][-1], flush=True)
        finally:
            drop_database(urls["PostgreSQL"])
    rows = [
        "| database | search p50 (ms, mean over 6 queries) | page without search | "
        "search / page | LIKE on JSON, no index | index speed-up | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, found in runs.items():
        search = [r["search"] for r in found]
        floor = [r["floor"] for r in found]
        scan = [r["scan"] for r in found]
        ratio = [r["search"] / r["floor"] for r in found]
        speedup = [r["scan"] / r["search"] for r in found]
        rows.append(
            f"| {name} | {statistics.median(search):.2f} ({min(search):.2f}-{max(search):.2f}) "
            f"| {statistics.median(floor):.2f} | {statistics.median(ratio):.1f}x "
            f"({min(ratio):.1f}-{max(ratio):.1f}) | {statistics.median(scan):.1f} "
            f"| {statistics.median(speedup):.0f}x ({min(speedup):.0f}-{max(speedup):.0f}) "
            f"| {len(found)} |"
        )
    record(
        f"Find by name at {len(catalogue.items):,} products (fashion-small metadata)",
        "\n".join(rows),
        f"Queries: {', '.join(QUERIES)}; a page of {PER_PAGE} and the total, as the API answers. "
        "Median of the repeats, range in brackets.",
    )


if __name__ == "__main__":
    main()
