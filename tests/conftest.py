"""Shared fixtures: databases on real servers, encoders, and real photos from ../shared."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cli.in_process import InProcessQueue
from core.context import Context
from core.db import make_engine
from core.encoder import ImageEncoder, PixelEncoder, VGG16Encoder, load_encoder
from core.settings import Settings, get_settings
from core.space_reader import SqlSpaceReader
from migrations import upgrade

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
PG_ADMIN_URL = os.environ.get(
    "LOOKALIKE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# Photos picked by eye from fashion-dev: two white T-shirts worn by a model, two white-and-blue
# Nike running shoes, a watch, a black T-shirt, and a few more T-shirts and shoes.
TSHIRTS = ["2049", "2040", "2288", "1855", "10062", "2243", "1852"]
SHOES = ["3168", "3159", "3161", "1636"]
OTHERS = ["10098"]
SAMPLE_IDS = TSHIRTS + SHOES + OTHERS


@pytest.fixture(scope="session")
def fashion_dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fashion-dev catalogue, unpacked once per test session."""
    archive = DATASETS / "fashion-dev.tar.gz"
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: the tests read real photos from ../shared/datasets")
    target = tmp_path_factory.mktemp("datasets")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "fashion-dev"


def make_catalogue(source: Path, target: Path, ids: list[str]) -> Path:
    """A small Kaggle-layout catalogue of ``ids`` copied from ``source``."""
    (target / "images").mkdir(parents=True)
    lines = (source / "styles.csv").read_text().splitlines()
    wanted = set(ids)
    rows = [line for line in lines[1:] if line.split(",", 1)[0] in wanted]
    (target / "styles.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    for product_id in ids:
        shutil.copy(source / "images" / f"{product_id}.jpg", target / "images")
    return target


@pytest.fixture
def sample_catalogue(fashion_dev: Path, tmp_path: Path) -> Path:
    return make_catalogue(fashion_dev, tmp_path / "catalogue", SAMPLE_IDS)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 for this test session."""
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"lookalike_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of its own, for tests whose code commits."""
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"lookalike_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_engine(pg_server_url: str) -> Iterator[Engine]:
    upgrade(pg_server_url)
    engine = make_engine(pg_server_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """A session on SQLite or on real PostgreSQL, inside a transaction rolled back afterwards."""
    if request.param == "postgresql":
        engine = request.getfixturevalue("pg_engine")
        owned = False
    else:
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        engine = make_engine(url)
        owned = True
    connection = engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()
        if owned:
            engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(database_url=f"sqlite:///{tmp_path / 'lookalike.db'}", weights="bundled")


@pytest.fixture
def pixel_encoder() -> PixelEncoder:
    """A fast encoder for tests that are not about the model."""
    return PixelEncoder(max_pixels=50_000_000)


@pytest.fixture(scope="session")
def vgg_encoder() -> VGG16Encoder:
    """The real VGG16 encoder with the bundled offline weights, loaded once."""
    return load_encoder(get_settings(weights="bundled", precision="float32"))


def in_process_context(encoder: ImageEncoder, **settings: Any) -> Context:
    """A context that runs job steps in this process with ``encoder``, on the session a test
    hands it (its own engine is never used). Settings as the old in-process defaults: no PCA
    unless asked for, two decode threads."""
    values: dict[str, Any] = {"database_url": "sqlite://", "pca_dims": 0, "decode_workers": 2}
    # Unvalidated: tests use blocks smaller than a real setting may be, to cross block ends.
    chosen = get_settings().model_copy(update={**values, **settings})
    return Context.create(chosen, InProcessQueue(), spaces=SqlSpaceReader(), encoder=encoder)


# --- the service: real Redis, real worker processes, PostgreSQL -----------------------------

REDIS_URL = os.environ.get("LOOKALIKE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Workers:
    """``lookalike worker`` processes started for a test, each in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, count: int = 1, args: tuple[str, ...] = (), **extra_env: str
    ) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            log = self.logs / f"worker-{len(self.processes)}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--concurrency", "1", *args],
                env={**self.env, **extra_env},
                cwd=ROOT,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            process.log = log  # type: ignore[attr-defined]
            self.processes.append(process)
            started.append(process)
        for process in started:
            self.wait_ready(process)
        return started

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        log: Path = process.log  # type: ignore[attr-defined]
        while time.monotonic() < deadline:
            text_ = log.read_text(errors="replace")
            if "worker process ready with model" in text_ and "ready." in text_:
                return
            if process.poll() is not None:
                pytest.fail(f"worker exited early:\n{text_[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"worker not ready after {timeout}s:\n{log.read_text()[-3000:]}")

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children: no chance to ack or requeue anything."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def remove_queue_keys(queue: str, url: str = REDIS_URL) -> list[str]:
    """Delete what a test's queue left in Redis: the queue's list (undelivered messages), its
    kombu bindings, and its unacknowledged messages in the shared ``unacked`` hash. Returns
    the keys that still name the queue afterwards (none, unless something else wrote them)."""
    import json

    import redis

    client = redis.Redis.from_url(url)
    try:
        for tag, raw in client.hscan_iter("unacked"):
            _message, exchange, routing_key = json.loads(raw)
            if queue in (exchange, routing_key):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        client.zrem("_kombu.binding_deadlines", queue)
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
        return [key.decode() for key in client.scan_iter(match=f"*{queue}*")]
    finally:
        client.close()


@pytest.fixture
def service_env(fresh_pg_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings shared by the web app, the workers and the CLI of one test: its own database,
    its own queue, its own media folder; afterwards, nothing of its queue left in Redis."""
    upgrade(fresh_pg_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        LOOKALIKE_DATABASE_URL=fresh_pg_url,
        LOOKALIKE_BROKER_URL=REDIS_URL,
        LOOKALIKE_QUEUE=f"lookalike-test-{uuid.uuid4().hex[:8]}",
        LOOKALIKE_MEDIA_DIR=str(tmp_path / "media"),
        LOOKALIKE_WEIGHTS="bundled",
        LOOKALIKE_BATCH_SIZE="4",
    )
    yield env
    # The workers and the app (fixtures that use this one) have stopped by now.
    left = remove_queue_keys(env["LOOKALIKE_QUEUE"])
    assert not left, f"Redis keys of this test's queue survived its teardown: {left}"


@pytest.fixture
def workers(service_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(service_env, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def app(service_env: dict[str, str]) -> Iterator[Flask]:
    from web import create_app

    config = {
        key.removeprefix("LOOKALIKE_").lower(): value
        for key, value in service_env.items()
        if key.startswith("LOOKALIKE_")
    }
    application = create_app(config)
    yield application
    application.extensions["lookalike.engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that several "processes" (engines) commit to."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    upgrade(url)
    return url
