"""The ``lookalike`` command as a user runs it: real model, real photos, real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from core.db import make_engine
from core.models import Neighbour
from tests.conftest import SAMPLE_IDS
from tests.test_images import bad_files

LOOKALIKE = [sys.executable, "-m", "cli"]
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(PYTHONPATH=str(ROOT), LOOKALIKE_WEIGHTS="bundled", **extra)
    return env


def _lookalike(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOOKALIKE, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300
    )


def _table(url: str) -> list[tuple[str, int, str, float]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    Neighbour.product_id, Neighbour.rank, Neighbour.neighbour_id, Neighbour.score
                ).order_by(Neighbour.product_id, Neighbour.rank)
            ).all()
    finally:
        engine.dispose()
    return [(a, b, c, float(d)) for a, b, c, d in rows]


def test_index_similar_and_errors_on_the_embedded_default(
    sample_catalogue: Path, tmp_path: Path
) -> None:
    for name, (path, _phrase) in bad_files(tmp_path).items():
        path.rename(sample_catalogue / "images" / name)
    workdir = tmp_path / "work"
    workdir.mkdir()

    indexed = _lookalike(
        workdir, "index", str(sample_catalogue), LOOKALIKE_MAX_IMAGE_PIXELS="20000000"
    )
    assert indexed.returncode == 0, indexed.stderr
    assert (workdir / "lookalike.db").is_file()  # SQLite in the working directory
    assert f"embedded {len(SAMPLE_IDS)}" in indexed.stdout
    assert "4 failed" in indexed.stdout
    assert "4 images have no styles.csv row" in indexed.stderr
    # A log file, not a terminal: progress as log lines, and none of TensorFlow's start-up
    # noise (oneDNN, no CUDA driver, the cuInit error) on a machine without a GPU.
    assert "\r" not in indexed.stderr and "lookalike.progress: indexing" in indexed.stderr
    for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "cudart_stub"):
        assert noise not in indexed.stderr, indexed.stderr
    assert "[job=" in indexed.stderr

    similar = _lookalike(workdir, "similar", "2049")
    assert similar.returncode == 0, similar.stderr
    lines = similar.stdout.splitlines()
    assert lines[0].startswith("2049  ADIDAS Men's Slim Fit White T-shirt")
    assert len(lines) == 11  # the product, then its ten lookalikes
    assert "T-shirt" in lines[1]

    errors = _lookalike(workdir, "errors")
    assert errors.returncode == 0
    assert {line.split("\t")[0] for line in errors.stdout.splitlines()} == {
        "text",
        "empty",
        "truncated",
        "huge",
    }
    jobs = _lookalike(workdir, "jobs")
    assert jobs.returncode == 0
    assert (
        "index" in jobs.stdout
        and "succeeded" in jobs.stdout
        # The photos (four of them broken), then the neighbour build's one block.
        and f"{len(SAMPLE_IDS) + 5}/{len(SAMPLE_IDS) + 5}" in jobs.stdout
    )

    evaluated = _lookalike(workdir, "evaluate", "--label", "articleType", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert [r["name"] for r in report][1] == "raw pixels 16x16, centred"
    assert all(r["queries"] == len(SAMPLE_IDS) for r in report)
    assert {s["label"] for s in report[0]["per_label"]} >= {"Tshirts", "Sports Shoes"}
    assert 0 < report[0]["micro_precision"] <= 1

    # Another model: indexing the stored products again re-embeds them under the new model id
    # and rebuilds the table from those vectors alone.
    again = _lookalike(
        workdir,
        "index",
        "--stored",
        LOOKALIKE_POOLING="max",
        LOOKALIKE_MAX_IMAGE_PIXELS="20000000",
    )
    assert again.returncode == 0, again.stderr
    assert f"embedded {len(SAMPLE_IDS)}, skipped 0" in again.stdout
    with sqlite3.connect(workdir / "lookalike.db") as connection:
        models = {row[0] for row in connection.execute("SELECT space_id FROM neighbours")}
        vectors = connection.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert len(models) == 1 and ":block4_conv3+block5_conv3:max^0.5+max^0.5:" in models.pop()
    assert vectors == 2 * len(SAMPLE_IDS)

    missing = _lookalike(workdir, "similar", "no-such-id")
    assert missing.returncode == 1
    assert "no product with id 'no-such-id'" in missing.stderr
    assert "Traceback" not in missing.stderr


def _embedded_count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM embeddings").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet


def test_interrupted_index_resumes_to_the_same_table(
    sample_catalogue: Path, tmp_path: Path, fresh_pg_url: str
) -> None:
    # Reference: one uninterrupted run, on PostgreSQL.
    reference = _lookalike(
        tmp_path,
        "index",
        str(sample_catalogue),
        LOOKALIKE_DATABASE_URL=fresh_pg_url,
        LOOKALIKE_BATCH_SIZE="2",
    )
    assert reference.returncode == 0, reference.stderr

    # Interrupted: killed hard once a few batches are committed, then run again.
    workdir = tmp_path / "interrupted"
    workdir.mkdir()
    db = workdir / "lookalike.db"
    process = subprocess.Popen(
        [*LOOKALIKE, "index", str(sample_catalogue)],
        cwd=workdir,
        env=_env(LOOKALIKE_BATCH_SIZE="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while _embedded_count(db) < 4 and time.monotonic() < deadline:
        assert process.poll() is None, "index finished before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    interrupted_at = _embedded_count(db)
    assert 4 <= interrupted_at < len(SAMPLE_IDS)

    resumed = _lookalike(workdir, "index", str(sample_catalogue), LOOKALIKE_BATCH_SIZE="2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {interrupted_at} already embedded" in resumed.stdout

    expected, got = _table(fresh_pg_url), _table(f"sqlite:///{db}")
    assert [row[:3] for row in got] == [row[:3] for row in expected]
    assert [row[3] for row in got] == pytest.approx([row[3] for row in expected], abs=1e-5)
    assert len(got) == len(SAMPLE_IDS) * 10
