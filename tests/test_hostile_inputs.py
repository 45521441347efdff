"""Issue 12, requirement 4: hostile files through the API and the CLI, and faults injected
while jobs run (backend termination, a broker restart). Afterwards every good photo is
indexed exactly once, every bad one reported exactly once, the neighbour table equals a
rebuild, and the media folder holds only photos that products refer to.

The kinds of file are in ``tests/hostile_files.py``; child and whole-worker kills are in
``tests/test_worker_faults.py``, the same new id posted twice at once in
``tests/test_uploads_and_media.py``.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from bench.common import free_port
from core.db import make_engine, make_sessionmaker
from core.errors import InvalidImage
from core.images import load_rgb, verify_image
from core.models import Embedding, ImageError, Product
from core.neighbour_table import lock_neighbour_table
from tests.conftest import (
    ROOT,
    SAMPLE_IDS,
    SHOES,
    TSHIRTS,
    Workers,
    make_catalogue,
)
from tests.hostile_files import MAX_PIXELS, HostileFile, hostile_files
from tests.test_service import photos, post_images, rebuilt_table, stored_table, wait_job
from tests.test_worker_faults import embeddings_per_product, finish, start_index, wait_embedded


def post(client: FlaskClient, files: list[HostileFile]) -> Any:
    data = {"images": [(io.BytesIO(f.data), f.name) for f in files]}
    return client.post("/api/products", data=data, content_type="multipart/form-data")


def products(url: str) -> dict[str, str]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = {pid: path for pid, path in session.execute(select(Product.id, Product.image_path))}
    engine.dispose()
    return rows


def media_files(media: Path) -> set[str]:
    return {str(p.resolve()) for p in media.rglob("*") if p.is_file()} if media.exists() else set()


def eventually(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.1)


def assert_accounted(
    files: list[HostileFile], embedded: dict[str, int], reports: dict[str, list[str]]
) -> None:
    """Every good file embedded once under its id, every bad one reported once, with its
    reason; ``reports`` maps a file name to the messages it got."""
    good = {f.product_id for f in files if f.good}
    assert {pid: n for pid, n in embedded.items() if pid in good} == dict.fromkeys(good, 1)
    for f in files:
        messages = reports.get(f.name, [])
        if f.good:
            assert not messages, (f.kind, messages)
            continue
        assert len(messages) == 1, (f.kind, f.name, messages)
        phrase = f.phrase or "invalid product id"
        assert re.search(phrase, messages[0]), (f.kind, messages[0])
        if f.product_id not in good:  # the second file of a stem: the first one is kept
            assert f.product_id not in embedded, f.kind


def test_the_generated_files_are_what_they_claim() -> None:
    files = hostile_files()
    assert len({f.kind for f in files}) >= 25
    for f in files:
        if f.good or f.bad_name:
            verify_image(f.data, MAX_PIXELS)
            assert load_rgb(f.data, MAX_PIXELS).mode == "RGB"
        else:
            with pytest.raises(InvalidImage, match=f.phrase):
                verify_image(f.data, MAX_PIXELS)
            with pytest.raises(InvalidImage, match=f.phrase):
                load_rgb(f.data, MAX_PIXELS)


# --- (a) through the API, with a real worker ------------------------------------------------


def test_hostile_files_through_the_api_in_one_and_in_many_requests(
    client: FlaskClient, workers: Workers, service_env: dict[str, str]
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    workers.start(1)
    at_once, one_by_one = hostile_files(0), hostile_files(1)
    reports: dict[str, list[str]] = {}
    jobs: list[str] = []

    def send(files: list[HostileFile]) -> None:
        response = post(client, files)
        body = response.get_json()
        assert response.status_code in (202, 400), (response.status_code, body)
        if response.status_code == 400:
            rejected = body["error"]["rejected"]
        else:
            rejected = body["rejected"]
            jobs.append(body["job_id"])
        for entry in rejected:
            reports.setdefault(entry["file"], []).append(entry["error"])

    send(at_once)
    # One request a file (each bad one alone is a 400), the two files of one stem together.
    twins = [f for f in one_by_one if f.product_id == "v1-twin"]
    send(twins)
    for f in one_by_one:
        if f not in twins:
            send([f])

    by_id = {f.product_id: f.name for f in at_once + one_by_one if not f.bad_name}
    for job_id in jobs:
        job = wait_job(client, job_id)
        assert job["state"] == "succeeded", job
        for error in job["errors"]:  # photos that pass arrival but fail in the worker
            reports.setdefault(by_id[error["product_id"]], []).append(error["message"])

    assert_accounted(at_once, embeddings_per_product(url), reports)
    assert_accounted(one_by_one, embeddings_per_product(url), reports)
    stored = products(url)
    assert set(stored) == {f.product_id for f in at_once + one_by_one if f.good}
    assert stored_table(url) == rebuilt_table(url)
    # Nothing but the products' photos in the media folder (refused files were never stored).
    eventually(lambda: media_files(media) == {str(Path(p).resolve()) for p in stored.values()})
    for f in at_once:
        if f.good:
            assert client.get(f"/api/products/{f.product_id}/similar").status_code == 200


# --- (b) through `lookalike index` ------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(PYTHONPATH=str(ROOT), LOOKALIKE_WEIGHTS="bundled", **extra)
    return env


def test_hostile_files_through_lookalike_index(tmp_path: Path, fresh_pg_url: str) -> None:
    files = hostile_files()
    images = tmp_path / "catalogue" / "images"
    images.mkdir(parents=True)
    for f in files:
        (images / f.name).write_bytes(f.data)

    indexed = subprocess.run(
        [sys.executable, "-m", "cli", "index", str(images.parent)],
        cwd=tmp_path,
        env=_env(LOOKALIKE_DATABASE_URL=fresh_pg_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert indexed.returncode == 0, indexed.stderr[-3000:]
    assert "Traceback" not in indexed.stderr
    good = [f for f in files if f.good]
    bad_content = [f for f in files if not f.good and not f.bad_name]
    assert f"embedded {len(good)}," in indexed.stdout
    assert f"{len(bad_content)} failed" in indexed.stdout

    # Bad content: one image error each, against its product, with its reason.
    engine = make_engine(fresh_pg_url)
    with engine.connect() as connection:
        errors = connection.execute(select(ImageError.product_id, ImageError.message)).all()
    engine.dispose()
    names = {f.product_id: f.name for f in files if not f.bad_name}
    reports: dict[str, list[str]] = {}
    for product_id, message in errors:
        reports.setdefault(names[product_id or ""], []).append(message)
    named_well = [f for f in files if not f.bad_name]
    embedded = embeddings_per_product(fresh_pg_url)
    assert_accounted(named_well, embedded, reports)

    # Bad names: each named once in the catalogue's notes, and nothing of it stored (a dot
    # file is skipped unnamed, as .DS_Store is).
    notes = [line for line in indexed.stderr.splitlines() if line.startswith("note: ")]
    stored = products(fresh_pg_url)
    for f in files:
        if not f.bad_name:
            continue
        if f.phrase != "appears twice":
            assert f.product_id not in embedded and f.product_id not in stored, f.kind
        if f.hidden:
            assert not any(f.product_id in note for note in notes), notes
            continue
        if f.phrase == "appears twice":
            token, reason = f.product_id, "more than once (first file kept)"
        else:
            shown = f.product_id if len(f.product_id) <= 40 else f"{f.product_id[:40]}..."
            token, reason = repr(shown), "not usable product ids"
        hits = [note for note in notes if token in note]
        assert len(hits) == 1 and reason in hits[0], (f.kind, notes)

    assert stored_table(fresh_pg_url) == rebuilt_table(fresh_pg_url)


# --- (c) faults: the database drops the worker's connections mid-job ------------------------


def _terminate_other_backends(url: str, keep: int) -> int:
    """Terminate every connection to the database but this one and ``keep``'s."""
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        dropped = connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), :keep)"
            ),
            {"keep": keep},
        )
    admin.dispose()
    return int(dropped or 0)


def _waiting_for_a_lock(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    engine.dispose()
    return int(waiting or 0)


def test_a_job_finishes_when_the_database_terminates_its_connections(
    client: FlaskClient, workers: Workers, service_env: dict[str, str], fashion_dev: Path
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    (worker,) = workers.start(1, LOOKALIKE_BATCH_SIZE="1")  # a commit a photo
    log: Path = worker.log  # type: ignore[attr-defined]
    locker = make_engine(url)
    with make_sessionmaker(locker)() as holding:
        # The table's lock held here, so the job ends up waiting on it inside a statement.
        lock_neighbour_table(holding)
        holder = int(holding.scalar(text("SELECT pg_backend_pid()")) or 0)
        response = post_images(client, photos(fashion_dev, SAMPLE_IDS))
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["job_id"]

        # While it embeds: its connections dropped between and during its commits.
        terminated = 0
        for at_least in (2, 6):
            wait_embedded(url, at_least)
            terminated += _terminate_other_backends(url, keep=holder)
        # While it waits for the lock: its statement fails, and the task is retried.
        eventually(lambda: _waiting_for_a_lock(url) == 1, timeout=60)
        terminated += _terminate_other_backends(url, keep=holder)
        eventually(lambda: "retry: Retry in" in log.read_text(errors="replace"), timeout=30)
        assert terminated >= 3
        eventually(lambda: _waiting_for_a_lock(url) == 1, timeout=60)  # the retry, waiting
        holding.rollback()
    locker.dispose()

    job = wait_job(client, job_id, timeout=180)
    assert job["state"] == "succeeded", job
    assert job["progress"] == {"done": len(SAMPLE_IDS), "total": len(SAMPLE_IDS)}
    assert embeddings_per_product(url) == dict.fromkeys(SAMPLE_IDS, 1)
    assert stored_table(url) == rebuilt_table(url)


# --- (d) faults: the broker restarts mid-job ----------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own, on a free port, its dump file in a test folder."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._cli("PING").strip() == "PONG":
                return
            time.sleep(0.05)
        pytest.fail("private redis-server did not start")

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def restart(self) -> None:
        """Shut down saving its data (as a broker with persistence does), then start again."""
        assert self.process is not None
        self._cli("SHUTDOWN", "SAVE")
        self.process.wait(timeout=10)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()


def test_a_job_finishes_across_a_broker_restart(
    private_redis: PrivateRedis,  # first: set up before the workers, stopped after them
    workers: Workers,
    service_env: dict[str, str],
    fashion_dev: Path,
    tmp_path: Path,
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    catalogue = make_catalogue(fashion_dev, tmp_path / "catalogue", SAMPLE_IDS)
    # The broker keeps its data across the restart (as with --appendonly yes); a short
    # visibility timeout, so that a task whose acknowledgement was lost comes back soon.
    env = {
        **service_env,
        "LOOKALIKE_BROKER_URL": private_redis.url,
        "LOOKALIKE_CHUNK_SIZE": "2",
        "LOOKALIKE_BATCH_SIZE": "1",
        "LOOKALIKE_VISIBILITY_TIMEOUT": "10",
    }
    workers.env = env
    (worker,) = workers.start(1)
    cli = start_index(catalogue, env)
    at_restart = wait_embedded(url, 3)
    private_redis.restart()
    assert at_restart < len(SAMPLE_IDS)

    out, err = finish(cli, 150)
    log = worker.log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert cli.returncode == 0, err[-3000:] + log[-3000:]
    assert "succeeded" in out
    assert "Connection to broker lost" in log, log[-3000:]  # the restart hit the worker
    assert embeddings_per_product(url) == dict.fromkeys(SAMPLE_IDS, 1)
    assert stored_table(url) == rebuilt_table(url)


# --- (e) concurrent writes: a replacement and a delete while an add job waits --------------


def test_a_replacement_and_a_delete_while_an_add_job_waits_for_the_table(
    client: FlaskClient, workers: Workers, service_env: dict[str, str], fashion_dev: Path
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    workers.start(2)
    seed = post_images(client, photos(fashion_dev, TSHIRTS[:3] + SHOES[:2]))
    assert wait_job(client, seed.get_json()["job_id"])["state"] == "succeeded"

    # The add job embeds its photos, then waits for the table's lock; meanwhile one of its
    # products gets another photo and another is deleted, each by a job of its own.
    locker = make_engine(url)
    with make_sessionmaker(locker)() as holding:
        lock_neighbour_table(holding)
        adding = post_images(client, photos(fashion_dev, [TSHIRTS[3], SHOES[2], "10098"]))
        add_id = adding.get_json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{add_id}").get_json()["progress"]["done"] < 3:
            assert time.monotonic() < deadline, "the add job did not embed its photos"
            time.sleep(0.1)
        replacing = post_images(client, photos(fashion_dev, [SHOES[3]]), ids=[TSHIRTS[3]])
        deleting = client.delete(f"/api/products/{SHOES[2]}")
        assert (replacing.status_code, deleting.status_code) == (202, 202)
        time.sleep(1.0)
        holding.rollback()  # releases the lock: the three jobs now race for it
    locker.dispose()

    for response in (adding, replacing, deleting):
        job = wait_job(client, response.get_json()["job_id"])
        assert job["state"] == "succeeded", job
    expected = {*TSHIRTS[:4], *SHOES[:2], "10098"}
    stored = products(url)
    assert set(stored) == expected
    # Every product's vector is of its photo now (the replacement's, for TSHIRTS[3]).
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Product.id, Product.content_hash, Embedding.content_hash).join(
                Embedding, Embedding.product_id == Product.id
            )
        ).all()
    engine.dispose()
    assert sorted(pid for pid, _, _ in rows) == sorted(expected)
    assert all(photo == vector for _, photo, vector in rows), rows
    replaced = (fashion_dev / "images" / f"{SHOES[3]}.jpg").read_bytes()
    assert client.get(f"/images/{TSHIRTS[3]}").data == replaced
    table = stored_table(url)
    assert SHOES[2] not in {row[0] for row in table} | {row[2] for row in table}
    assert table == rebuilt_table(url)
    # The deleted product's photo and the replaced photo are gone from the media folder.
    eventually(lambda: media_files(media) == {str(Path(p).resolve()) for p in stored.values()})
