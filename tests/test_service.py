"""The asynchronous service end to end: Flask API, real Redis, real worker processes and
PostgreSQL. Celery's eager mode is never used here."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from core.db import make_engine, make_sessionmaker
from core.models import Embedding, Neighbour, Product
from core.neighbour_table import lock_neighbour_table
from core.neighbours import top_k
from core.spaces import Space, load_space_vectors
from tests.conftest import SHOES, TSHIRTS, Workers
from tests.test_images import bad_files

Row = tuple[str, int, str, float]


def post_images(
    client: FlaskClient, paths: list[Path], ids: list[str] | None = None, **extra: Any
) -> Any:
    data: dict[str, Any] = {"images": [(io.BytesIO(p.read_bytes()), p.name) for p in paths]}
    if ids is not None:
        data["id"] = ids
    data.update(extra)
    return client.post("/api/products", data=data, content_type="multipart/form-data")


def wait_job(client: FlaskClient, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/jobs/{job_id}").get_json()
        if body["state"] in ("succeeded", "failed"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish in {timeout}s: {body}")


def stored_table(url: str) -> list[Row]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(
            select(
                Neighbour.product_id, Neighbour.rank, Neighbour.neighbour_id, Neighbour.score
            ).order_by(Neighbour.product_id, Neighbour.rank)
        ).all()
    engine.dispose()
    return [(a, b, c, float(d)) for a, b, c, d in rows]


def rebuilt_table(url: str, k: int = 10) -> list[Row]:
    """What a full rebuild from the stored vectors gives."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        model_ids = session.scalars(select(Embedding.model_id).distinct()).all()
        assert len(model_ids) == 1
        vectors = load_space_vectors(session, Space(model_ids[0]))
    engine.dispose()
    lists = top_k(vectors.vectors, k)
    return sorted(
        (pid, rank + 1, vectors.ids[pos], float(score))
        for pid, row, scores in zip(vectors.ids, lists.positions, lists.scores, strict=True)
        for rank, (pos, score) in enumerate(zip(row, scores, strict=True))
        if pos >= 0
    )


def photos(root: Path, ids: list[str]) -> list[Path]:
    return [root / "images" / f"{pid}.jpg" for pid in ids]


def count(url: str, model: type[Product] | type[Embedding]) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        value = connection.execute(select(func.count()).select_from(model)).scalar_one()
    engine.dispose()
    return int(value)


def test_add_search_and_delete_through_the_queue(
    client: FlaskClient, workers: Workers, fashion_dev: Path, service_env: dict[str, str]
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    workers.start(2)
    health = client.get("/healthz")
    assert health.status_code == 200, health.get_json()

    base = TSHIRTS[:5] + SHOES[:3] + ["10098", "2272", "2844", "3150"]
    response = post_images(client, photos(fashion_dev, base))
    assert response.status_code == 202, response.get_json()
    job = wait_job(client, response.get_json()["job_id"])
    assert job["state"] == "succeeded" and job["progress"] == {"done": 12, "total": 12}
    before = stored_table(url)
    assert before == rebuilt_table(url) and len(before) == 12 * 10

    # New photos arrive: they get lists, and older lists they enter are updated in place.
    newcomers = TSHIRTS[5:] + SHOES[3:]
    meta = '{"productDisplayName": "New arrival", "articleType": "Tshirts"}'
    response = post_images(client, photos(fashion_dev, newcomers), metadata=[meta] * len(newcomers))
    assert response.status_code == 202
    job = wait_job(client, response.get_json()["job_id"])
    assert job["state"] == "succeeded", job
    after = stored_table(url)
    assert after == rebuilt_table(url)  # identical to a full rebuild
    changed = {row[0] for row in set(after) - set(before)} - set(newcomers)
    assert changed, "the newcomers entered no older list"
    assert job["result"]["lists_written"] == len(changed) + len(newcomers)

    similar = client.get(f"/api/products/{newcomers[0]}/similar").get_json()
    assert similar["product"]["productDisplayName"] == "New arrival"
    assert [n["rank"] for n in similar["neighbours"]] == list(range(1, 11))

    # Search by photo: the catalogue's own photo of 3168 finds 3168 first; nothing is added.
    products = count(url, Product)
    image = (fashion_dev / "images" / "3168.jpg").read_bytes()
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(image), "query.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    job = wait_job(client, response.get_json()["job_id"])
    hits = job["result"]["neighbours"]
    assert hits[0]["id"] == "3168" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 10 and count(url, Product) == products

    # Delete: every list that held it is repaired.
    victim = after[0][2]
    response = client.delete(f"/api/products/{victim}")
    assert response.status_code == 202
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    table = stored_table(url)
    assert victim not in {row[0] for row in table} | {row[2] for row in table}
    assert table == rebuilt_table(url)
    assert client.get(f"/api/products/{victim}").status_code == 404


def test_two_add_jobs_at_once_lose_nothing(
    client: FlaskClient, workers: Workers, fashion_dev: Path, service_env: dict[str, str]
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    workers.start(2)
    seed = post_images(client, photos(fashion_dev, TSHIRTS[:3] + SHOES[:2]))
    assert wait_job(client, seed.get_json()["job_id"])["state"] == "succeeded"

    batches = [[*TSHIRTS[3:], "10098"], [*SHOES[2:], "2272", "2844"]]
    responses: list[Any] = [None, None]

    def post(index: int) -> None:
        responses[index] = post_images(
            client.application.test_client(), photos(fashion_dev, batches[index])
        )

    # A storefront reading all the while must never see a half-written list.
    snapshots: list[list[tuple[str, int, int, int]]] = []
    stop = threading.Event()

    def read() -> None:
        engine = make_engine(url)
        query = select(
            Neighbour.product_id, func.count(), func.min(Neighbour.rank), func.max(Neighbour.rank)
        ).group_by(Neighbour.product_id)
        while not stop.is_set():
            with engine.connect() as connection:
                snapshots.append([tuple(row) for row in connection.execute(query)])
            time.sleep(0.01)
        engine.dispose()

    reader = threading.Thread(target=read)
    reader.start()
    # Hold the neighbour-table lock, so both jobs reach their table update while it is held:
    # they must then wait for it one after the other instead of overwriting each other.
    locker = make_engine(url)
    with make_sessionmaker(locker)() as holding:
        lock_neighbour_table(holding)
        threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ids = [r.get_json()["job_id"] for r in responses]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [client.get(f"/api/jobs/{job_id}").get_json() for job_id in ids]
            if all(s["progress"]["done"] == s["progress"]["total"] for s in states):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        states = [client.get(f"/api/jobs/{job_id}").get_json() for job_id in ids]
        assert [s["state"] for s in states] == ["running", "running"], states
        holding.rollback()  # releases the lock
    locker.dispose()
    jobs = [wait_job(client, job_id) for job_id in ids]
    stop.set()
    reader.join()
    assert len(snapshots) > 10
    for snapshot in snapshots:
        lengths = {n for _, n, _, _ in snapshot}
        assert len(lengths) == 1, snapshot  # every list complete, all of the same length
        assert all(low == 1 and high == n for _, n, low, high in snapshot), snapshot
    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"]
    # Both jobs really ran side by side, on different workers.
    starts = [job["started_at"] for job in jobs]
    ends = [job["finished_at"] for job in jobs]
    assert max(starts) < min(ends), (starts, ends)
    assert stored_table(url) == rebuilt_table(url)
    assert count(url, Product) == 5 + sum(len(b) for b in batches)


def test_workers_caches_stay_right_across_adds_replacements_and_deletes(
    client: FlaskClient, workers: Workers, fashion_dev: Path, service_env: dict[str, str]
) -> None:
    """Each worker keeps its copy of the vectors and list ends between tasks; whichever worker
    takes each job, what the others changed in between must be seen, never a stale copy."""
    url = service_env["LOOKALIKE_DATABASE_URL"]
    workers.start(2)
    steps: list[tuple[str, Any]] = [
        ("add", TSHIRTS[:3] + SHOES[:2]),
        ("add", [TSHIRTS[3], SHOES[2]]),
        ("add", [TSHIRTS[4]]),
        # A new photo for an existing product: its old vector must not be used again.
        ("replace", (TSHIRTS[0], SHOES[3])),
        ("delete", SHOES[1]),
        ("add", [TSHIRTS[5], "10098"]),
        ("delete", TSHIRTS[2]),
        ("add", [TSHIRTS[6]]),
    ]
    for kind, what in steps:
        if kind == "add":
            response = post_images(client, photos(fashion_dev, what))
        elif kind == "replace":
            product, photo = what
            response = post_images(client, photos(fashion_dev, [photo]), ids=[product])
        else:
            response = client.delete(f"/api/products/{what}")
        assert response.status_code == 202, response.get_json()
        job = wait_job(client, response.get_json()["job_id"])
        assert job["state"] == "succeeded", (kind, what, job)
        assert stored_table(url) == rebuilt_table(url), (kind, what)
    # A search sees the replaced photo, not the old one.
    image = (fashion_dev / "images" / f"{SHOES[3]}.jpg").read_bytes()
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(image), "query.jpg")},
        content_type="multipart/form-data",
    )
    hits = wait_job(client, response.get_json()["job_id"])["result"]["neighbours"]
    assert hits[0]["id"] == TSHIRTS[0] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_bad_uploads_are_refused_or_recorded(
    client: FlaskClient,
    workers: Workers,
    fashion_dev: Path,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    url = service_env["LOOKALIKE_DATABASE_URL"]
    media = Path(service_env["LOOKALIKE_MEDIA_DIR"])
    bad = {name: path for name, (path, _phrase) in bad_files(tmp_path).items()}
    everything_bad = [bad["text.jpg"], bad["empty.jpg"]]

    # Every file bad: 400 naming each, nothing stored.
    response = post_images(client, everything_bad)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert {r["file"] for r in error["rejected"]} == {"text.jpg", "empty.jpg"}
    assert "text.jpg" in error["message"] and "empty.jpg" in error["message"]
    assert count(url, Product) == 0 and not media.exists()

    # Malformed metadata: 400, nothing stored.
    response = post_images(client, photos(fashion_dev, ["2049"]), metadata=["{not json"])
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"
    assert count(url, Product) == 0

    # Some bad: the good ones are stored and indexed, the rejected ones listed; the truncated
    # JPEG is decoded whole on arrival, so it is refused there too (a photo that fails only in
    # the worker: tests/test_uploads_and_media.py).
    workers.start(1)
    good = photos(fashion_dev, ["2049", "3168"])
    truncated = tmp_path / "truncated.jpg"  # a real photo cut short: its header is intact
    whole = (fashion_dev / "images" / "2288.jpg").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    response = post_images(client, [*good, bad["text.jpg"], truncated])
    assert response.status_code == 202
    body = response.get_json()
    assert [r["file"] for r in body["rejected"]] == ["text.jpg", "truncated.jpg"]
    assert "truncated" in body["rejected"][1]["error"]
    assert body["product_ids"] == ["2049", "3168"]
    job = wait_job(client, body["job_id"])
    assert job["state"] == "succeeded"
    assert job["errors"] == []
    assert job["result"]["failed"] == 0
    assert count(url, Embedding) == 2

    # Unknown ids are 404, with the JSON error shape.
    for path in (
        "/api/products/nope",
        "/api/products/nope/similar",
        "/api/jobs/nope",
        "/images/nope",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.get_json()["error"]) == {"code", "message"}
    assert client.delete("/api/products/nope").status_code == 404

    # A search photo that is not an image: 400 with the reason, no job.
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(b"text"), "q.txt")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert "not an image" in response.get_json()["error"]["message"]


def test_limits_token_listing_and_images(
    service_env: dict[str, str], fashion_dev: Path, tmp_path: Path
) -> None:
    from web import create_app

    app = create_app(
        {
            "database_url": service_env["LOOKALIKE_DATABASE_URL"],
            "broker_url": service_env["LOOKALIKE_BROKER_URL"],
            "queue": service_env["LOOKALIKE_QUEUE"],
            "media_dir": tmp_path / "media",
            "api_token": "s3cret",
            "max_request_bytes": 200_000,
        }
    )
    client = app.test_client()
    photo = photos(fashion_dev, ["2049"])
    assert post_images(client, photo).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    big = {"images": [(io.BytesIO(b"x" * 300_000), "big.jpg")]}
    response = client.post(
        "/api/products", data=big, headers=auth, content_type="multipart/form-data"
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"

    meta = '{"articleType": "Tshirts", "productDisplayName": "White tee"}'
    response = client.post(
        "/api/products",
        headers=auth,
        content_type="multipart/form-data",
        data={
            "images": [
                (io.BytesIO(photo[0].read_bytes()), "a.jpg"),
                (io.BytesIO((fashion_dev / "images" / "3168.jpg").read_bytes()), "b.jpg"),
            ],
            "id": ["tee-1", "shoe-1"],
            "metadata": [meta, '{"articleType": "Shoes"}'],
        },
    )
    assert response.status_code == 202, response.get_json()
    listing = client.get("/api/products?articleType=Tshirts&per_page=5").get_json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == "tee-1"
    assert (listing["page"], listing["per_page"]) == (1, 5)
    assert client.get("/api/products?page=0").status_code == 400
    image = client.get("/images/tee-1")
    assert image.status_code == 200 and image.data == photo[0].read_bytes()
    assert client.get("/api/products/tee-1").get_json()["productDisplayName"] == "White tee"
    app.extensions["lookalike.engine"].dispose()

    # No broker: health says which part is down; a new job is recorded as failed, not lost.
    down = create_app(
        {
            "database_url": service_env["LOOKALIKE_DATABASE_URL"],
            "broker_url": "redis://127.0.0.1:1/0",
            "media_dir": tmp_path / "media",
        }
    )
    client = down.test_client()
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["database"] == "ok" and health.get_json()["broker"] != "ok"
    response = client.post(
        "/api/search",
        content_type="multipart/form-data",
        data={"image": (io.BytesIO(photo[0].read_bytes()), "q.jpg")},
    )
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    down.extensions["lookalike.engine"].dispose()


def test_a_worker_killed_mid_index_loses_nothing(
    workers: Workers, sample_catalogue: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, SAMPLE_IDS

    url = service_env["LOOKALIKE_DATABASE_URL"]
    # Redis hands a lost worker's unacknowledged task to another after this many seconds.
    env = {
        **service_env,
        "LOOKALIKE_VISIBILITY_TIMEOUT": "8",
        "LOOKALIKE_CHUNK_SIZE": "2",
        "LOOKALIKE_BATCH_SIZE": "1",
    }
    workers.env = env
    (victim,) = workers.start(1)
    cli = subprocess.Popen(
        [sys.executable, "-m", "cli", "index", str(sample_catalogue)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = make_engine(url)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            embedded = connection.execute(select(func.count()).select_from(Embedding)).scalar_one()
        if embedded >= 3:
            break
        time.sleep(0.05)
    Workers.kill(victim)  # mid-chunk: chunks are 2 photos, embedded one at a time
    with engine.connect() as connection:
        at_kill = connection.execute(select(func.count()).select_from(Embedding)).scalar_one()
    assert 3 <= at_kill < len(SAMPLE_IDS)
    workers.start(1)
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err[-3000:]
    assert "succeeded" in out
    engine.dispose()

    # Every product embedded exactly once, and the table equals a clean run's.
    engine = make_engine(url)
    with engine.connect() as connection:
        per_product = connection.execute(
            select(Embedding.product_id, func.count()).group_by(Embedding.product_id)
        ).all()
    engine.dispose()
    assert sorted(pid for pid, _ in per_product) == sorted(SAMPLE_IDS)
    assert {n for _, n in per_product} == {1}
    table = stored_table(url)
    assert table == rebuilt_table(url)

    clean = subprocess.run(
        [sys.executable, "-m", "cli", "index", str(sample_catalogue)],
        env={
            k: v
            for k, v in service_env.items()
            if k not in ("LOOKALIKE_DATABASE_URL", "LOOKALIKE_BROKER_URL")
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    clean_table = stored_table(f"sqlite:///{tmp_path / 'lookalike.db'}")
    assert [row[:3] for row in table] == [row[:3] for row in clean_table]
    np.testing.assert_allclose([r[3] for r in table], [r[3] for r in clean_table], atol=1e-5)
