"""Worker faults with real worker processes on Redis: a pool child killed mid-job is replaced
once (no restart loop) and its task finishes; a whole worker killed mid-job stalls its job only
until the visibility timeout, short by default, because live workers renew the leases of the
tasks they hold: a task running longer than the timeout is never handed to a second worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from core.db import make_engine
from core.models import Embedding
from tests.conftest import ROOT, SAMPLE_IDS, Workers, make_catalogue

READY = "worker process ready with model"


def pool_children(process: subprocess.Popen[bytes]) -> list[int]:
    """The pids of a worker's pool processes (its direct children)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def start_index(catalogue: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "index", str(catalogue)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(cli: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The CLI's output once it exits; killed (and the test failed) if it takes longer."""
    try:
        return cli.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        cli.kill()
        out, err = cli.communicate()
        raise AssertionError(
            f"the job did not finish within {timeout}s:\n{out}{err[-3000:]}"
        ) from None


def wait_embedded(url: str, at_least: int, timeout: float = 180) -> int:
    engine = make_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                embedded = connection.execute(
                    select(func.count()).select_from(Embedding)
                ).scalar_one()
            if embedded >= at_least:
                return int(embedded)
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"fewer than {at_least} photos embedded after {timeout}s")


def embeddings_per_product(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Embedding.product_id, func.count()).group_by(Embedding.product_id)
        ).all()
    engine.dispose()
    return {product_id: n for product_id, n in rows}


def test_a_killed_pool_child_is_replaced_once_and_its_task_finishes(
    workers: Workers, sample_catalogue: Path, service_env: dict[str, str]
) -> None:
    # Small chunks embedded one photo at a time, so the kill lands inside a chunk.
    env = {**service_env, "LOOKALIKE_CHUNK_SIZE": "2", "LOOKALIKE_BATCH_SIZE": "1"}
    workers.env = env
    (worker,) = workers.start(1)
    log: Path = worker.log  # type: ignore[attr-defined]
    (child,) = pool_children(worker)
    cli = start_index(sample_catalogue, env)
    at_kill = wait_embedded(env["LOOKALIKE_DATABASE_URL"], 3)
    os.kill(child, signal.SIGKILL)
    assert at_kill < len(SAMPLE_IDS)

    # The replacement loads the model (seconds) and must not be killed for being slow to
    # start: with Celery's default worker_proc_alive_timeout (4 s) it was, again and again.
    out, err = finish(cli, 150)
    text = log.read_text(errors="replace")
    assert cli.returncode == 0, err[-3000:] + text[-3000:]
    assert "succeeded" in out
    assert "Timed out waiting for UP message" not in text
    assert text.count(READY) == 2, text[-3000:]
    (replacement,) = pool_children(worker)
    assert replacement != child
    assert embeddings_per_product(env["LOOKALIKE_DATABASE_URL"]) == dict.fromkeys(SAMPLE_IDS, 1)


def test_a_killed_worker_s_job_finishes_soon_after_a_new_worker_starts(
    workers: Workers, sample_catalogue: Path, service_env: dict[str, str]
) -> None:
    # The settings that decide how soon a lost task comes back (visibility timeout, time
    # limits, the restore sweep) are the defaults; only chunks are small, to kill mid-job.
    env = {**service_env, "LOOKALIKE_CHUNK_SIZE": "2", "LOOKALIKE_BATCH_SIZE": "1"}
    assert not any(
        key in env for key in ("LOOKALIKE_VISIBILITY_TIMEOUT", "LOOKALIKE_TASK_TIME_LIMIT")
    )
    workers.env = env
    (victim,) = workers.start(1)
    cli = start_index(sample_catalogue, env)
    at_kill = wait_embedded(env["LOOKALIKE_DATABASE_URL"], 3)
    Workers.kill(victim)  # parent and child: nothing acknowledged, nothing requeued
    assert at_kill < len(SAMPLE_IDS)

    workers.start(1)
    ready_at = time.monotonic()
    out, err = finish(cli, 120)
    assert time.monotonic() - ready_at < 120
    assert cli.returncode == 0, err[-3000:]
    assert "succeeded" in out
    assert embeddings_per_product(env["LOOKALIKE_DATABASE_URL"]) == dict.fromkeys(SAMPLE_IDS, 1)


def test_a_task_running_past_the_visibility_timeout_stays_with_its_worker(
    workers: Workers, fashion_dev: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    # One chunk of 400 photos, embedded one at a time, runs several visibility timeouts long
    # (about 19 s where the model runs in bfloat16 on AVX-512, 80 s in float32) while a second, idle
    # worker sweeps for stale tasks every second.
    lines = (fashion_dev / "styles.csv").read_text().splitlines()[1:]
    ids = [line.split(",", 1)[0] for line in lines][:400]
    catalogue = make_catalogue(fashion_dev, tmp_path / "long", ids)
    visibility = 2
    env = {
        **service_env,
        "LOOKALIKE_VISIBILITY_TIMEOUT": str(visibility),
        "LOOKALIKE_CHUNK_SIZE": str(len(ids)),
        "LOOKALIKE_BATCH_SIZE": "1",
    }
    workers.env = env
    started = workers.start(2)
    out, err = finish(start_index(catalogue, env), 240)
    assert "succeeded" in out, err[-3000:]
    logs = "".join(p.log.read_text(errors="replace") for p in started)  # type: ignore[attr-defined]
    took = [
        float(s) for s in re.findall(r"lookalike\.index_chunk\[\S+\] succeeded in ([\d.]+)s", logs)
    ]
    assert took and max(took) > 2 * visibility, "the chunk was too quick to prove anything"
    received = re.findall(r"Task (lookalike\.\w+)\[([0-9a-f-]+)\] received", logs)
    assert sorted(name for name, _ in received) == [
        "lookalike.build_block",  # one block: a small catalogue
        "lookalike.finalise_index",
        "lookalike.index_chunk",
    ]
    assert embeddings_per_product(env["LOOKALIKE_DATABASE_URL"]) == dict.fromkeys(ids, 1)
