"""The read cache (core.read_cache): lookalike responses kept in each web process's memory, and
dropped once the change counters say a list or a product changed. The promise: a read that
starts LOOKALIKE_READ_CACHE_SECONDS after a write committed never returns what it replaced, in
any process; checked here against separate `lookalike serve` processes on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text

from bench.common import free_port
from core.db import make_engine, make_sessionmaker
from core.read_cache import ReadCache
from migrations import upgrade
from tests.conftest import ROOT, TSHIRTS
from tests.test_read_path import index, index_only


@pytest.fixture
def indexed(sample_catalogue: Path, fresh_pg_url: str) -> Iterator[Engine]:
    """PostgreSQL holding the sample catalogue with its lists (pixel encoder)."""
    upgrade(fresh_pg_url)
    engine = make_engine(fresh_pg_url)
    with make_sessionmaker(engine)() as session:
        index(session, sample_catalogue)
        session.commit()
    yield engine
    engine.dispose()


class Renders:
    """A render function that counts its calls and answers the call number."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return str(self.calls).encode()


def test_kept_until_a_counter_moves(indexed: Engine) -> None:
    cache = ReadCache(indexed, entries=10, max_age=0.05)
    render = Renders()
    assert cache.get("a", render) == b"1"
    assert cache.get("a", render) == b"1" and render.calls == 1
    time.sleep(0.06)
    assert cache.get("a", render) == b"1"  # checked: nothing moved
    writes = [
        "UPDATE neighbours SET score = score WHERE product_id = :id",  # a list written
        "UPDATE products SET meta = meta WHERE id = :id",  # a product's metadata
        "DELETE FROM products WHERE id = :id",  # a product gone
    ]
    for n, write in enumerate(writes, start=2):
        with indexed.begin() as connection:
            connection.execute(text(write), {"id": TSHIRTS[n]})
        assert cache.get("a", render) == str(n - 1).encode()  # within the bound: still kept
        time.sleep(0.06)
        assert cache.get("a", render) == str(n).encode(), write


def test_lists_written_as_new_rows_move_the_counter(
    indexed: Engine, sample_catalogue: Path
) -> None:
    """A build writes new list rows through COPY on PostgreSQL (core.neighbour_table); the
    table's statement trigger must move the counter for it as for an INSERT."""
    counter = text("SELECT value FROM change_counters WHERE name = 'neighbours'")
    rows = text("SELECT count(*) FROM neighbours WHERE product_id = :id")
    with indexed.begin() as connection:
        connection.execute(
            text("DELETE FROM neighbours WHERE product_id = :id"), {"id": TSHIRTS[0]}
        )
        before = connection.scalar(counter)
    with make_sessionmaker(indexed)() as session:
        index_only(session, sample_catalogue)  # the same catalogue: the missing list written
        session.commit()
    with indexed.begin() as connection:
        assert connection.scalar(rows, {"id": TSHIRTS[0]}) > 0
        assert connection.scalar(counter) > before


def test_bounded_and_least_recently_used_out(indexed: Engine) -> None:
    cache = ReadCache(indexed, entries=2, max_age=60)
    render = Renders()
    cache.get("a", render)
    cache.get("b", render)
    cache.get("a", render)  # a is now the most recent
    cache.get("c", render)  # b goes
    assert len(cache) == 2
    assert cache.get("a", render) == b"1" and cache.get("c", render) == b"3"
    assert cache.get("b", render) == b"4"
    assert ReadCache(indexed, entries=0, max_age=60).get("a", render) == b"5"


def test_a_response_rendered_across_a_drop_is_not_kept(indexed: Engine) -> None:
    """A render that began before the counters moved may hold what the write replaced: it is
    answered, not kept."""
    cache = ReadCache(indexed, entries=10, max_age=0.05)
    cache.get("warm", Renders())

    def slow_render() -> bytes:
        with indexed.begin() as connection:
            connection.execute(
                text("UPDATE products SET meta = meta WHERE id = :id"), {"id": TSHIRTS[1]}
            )
        time.sleep(0.06)
        cache.get("other", Renders())  # another request checks, and drops everything
        return b"old"

    assert cache.get("slow", slow_render) == b"old"
    assert cache.get("slow", Renders()) == b"1"


class SlowCounters:
    """The cache's counter read, taking ``delay`` seconds longer: a slow database."""

    def __init__(self, statement: Any, delay: float) -> None:
        self.statement, self.delay, self.reads = statement, delay, 0

    def rows(self) -> list[Any]:
        self.reads += 1
        time.sleep(self.delay)
        return list(self.statement.rows())


def test_the_check_runs_behind_the_requests_within_the_bound(indexed: Engine) -> None:
    """Past half the bound a request starts the counters' check in the background and answers
    from memory; the check drops what a write replaced before the bound, no request waiting."""
    cache = ReadCache(indexed, entries=10, max_age=2.0)
    slow = cache._counters = SlowCounters(cache._counters, 0.5)  # type: ignore[assignment]
    render = Renders()
    assert cache.get("a", render) == b"1" and slow.reads == 1  # the first read checks first
    with indexed.begin() as connection:
        connection.execute(
            text("UPDATE products SET meta = meta WHERE id = :id"), {"id": TSHIRTS[0]}
        )
    time.sleep(1.1)  # past half the bound
    started = time.perf_counter()
    assert cache.get("a", render) == b"1"  # answered from memory, not after the slow read
    assert time.perf_counter() - started < 0.25
    assert cache.get("a", render) == b"1" and render.calls == 1  # one check at a time
    time.sleep(0.7)  # the background check has landed; the bound (2 s) has not passed
    assert slow.reads == 2
    assert cache.get("a", render) == b"2"


# --- across processes ---------------------------------------------------------------------


@pytest.fixture
def served(indexed: Engine, tmp_path: Path) -> Iterator[str]:
    """`lookalike serve`, two processes, on the indexed database; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        LOOKALIKE_DATABASE_URL=indexed.url.render_as_string(hide_password=False),
        LOOKALIKE_MEDIA_DIR=str(tmp_path / "media"),
    )
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/api/products", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield base
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def every_process_reads(base: str, product_id: str, reads: int = 12) -> list[dict[str, Any]]:
    """``reads`` GETs on new connections, so that both processes answer some."""
    bodies = []
    for _ in range(reads):
        with requests.Session() as session:
            response = session.get(f"{base}/api/products/{product_id}/similar", timeout=5)
        bodies.append(response.json() if response.ok else {"status": response.status_code})
    return bodies


def test_no_process_serves_an_old_list_once_the_bound_has_passed(
    indexed: Engine, served: str
) -> None:
    """Writes committed by another process (here: this one, as a worker would): a metadata
    change of a listed product, a list rewritten, a product deleted. 1 s (the default bound)
    after each commit, every read from every serving process shows it."""
    product = TSHIRTS[0]
    before = every_process_reads(served, product)  # every process keeps the list now
    listed = before[0]["neighbours"][0]["id"]
    bound = 1.0

    with indexed.begin() as connection:
        connection.execute(
            text("UPDATE products SET meta = CAST(:meta AS json) WHERE id = :id"),
            {"meta": '{"productDisplayName": "Renamed"}', "id": listed},
        )
    time.sleep(bound)
    for body in every_process_reads(served, product):
        assert body["neighbours"][0]["productDisplayName"] == "Renamed"

    with indexed.begin() as connection:
        connection.execute(
            text("UPDATE neighbours SET score = 0.5 WHERE product_id = :id AND rank = 1"),
            {"id": product},
        )
    time.sleep(bound)
    for body in every_process_reads(served, product):
        assert body["neighbours"][0]["score"] == 0.5

    with indexed.begin() as connection:
        connection.execute(text("DELETE FROM products WHERE id = :id"), {"id": product})
    time.sleep(bound)
    assert every_process_reads(served, product) == [{"status": 404}] * 12
