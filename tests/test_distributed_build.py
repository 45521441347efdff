"""The full neighbour build in blocks (issue 16, item 1): any worker takes any block, a block
run twice changes nothing, the job's progress counts the blocks, the last block finishes the
job; two real workers, one killed mid-build, give the table the in-process build gives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core.catalogue import read_catalogue
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.job_steps import run_step
from core.jobs import JobStep, StepCall
from core.models import BuildBlock, Embedding, Job, Neighbour, Product
from core.neighbour_build import BlockState, BuildPlan, block_bounds, run_block
from core.spaces import Space, load_space_vectors
from tests.conftest import ROOT, Workers, in_process_context
from tests.test_indexing import _colour_catalogue, _table, table_of
from tests.test_worker_faults import pool_children

K = 10


def test_the_in_process_build_runs_the_same_blocks(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path, 23)
    context = in_process_context(pixel_encoder, build_block_rows=2, neighbours=4)
    *_, job = index_catalogue(context, db_session, read_catalogue(root).items)
    assert job.state == "succeeded"
    space = Space(pixel_encoder.model_id)
    table = _table(db_session)
    assert table == table_of(load_space_vectors(db_session, space), k=4)
    blocks = db_session.scalars(
        select(BuildBlock).where(BuildBlock.job_id == job.id).order_by(BuildBlock.block_no)
    ).all()
    # Full blocks while more than 8 are left, then smaller ones (block_bounds).
    assert [(b.row_start, b.row_stop) for b in blocks] == [(n, n + 2) for n in range(0, 16, 2)] + [
        (n, n + 1) for n in range(16, 23)
    ]
    assert {b.state for b in blocks} == {BlockState.DONE} and all(b.attempts == 1 for b in blocks)
    assert (job.done, job.total) == (23 + 15, 23 + 15)  # the photos, then the blocks

    # A block run again (a redelivery) writes nothing and changes nothing.
    blocks[2].state = BlockState.QUEUED
    db_session.commit()
    plan = BuildPlan.of(job)
    assert plan is not None and plan.space_id == space.id and plan.rows == 23
    for _ in run_block(db_session, job.id, 2, space, context.spaces, 4, 64):
        db_session.commit()
    db_session.commit()
    # Sent again once the job has finished, the step does nothing at all.
    for _ in run_step(context, db_session, StepCall(JobStep.BUILD_BLOCK, (job.id, 3))):
        pass
    assert db_session.get(BuildBlock, (job.id, 3)).attempts == 1  # type: ignore[union-attr]
    again = db_session.get(BuildBlock, (job.id, 2))
    assert again is not None and (again.attempts, again.written) == (2, 0)
    assert _table(db_session) == table


def test_the_last_blocks_shrink_so_that_workers_finish_together() -> None:
    bounds = block_bounds(1_000_000, 16_384)
    sizes = [stop - start for start, stop in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == 1_000_000
    assert all(a[1] == b[0] for a, b in pairwise(bounds))  # no gap
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 16_384
    # The shrinking blocks add up to several full ones, each a sixteenth of one at least
    # (the very last takes what is left).
    tail = [size for size in sizes if size < 16_384]
    assert 6 * 16_384 < sum(tail) < 8 * 16_384 and min(tail[:-1]) == 1_024
    # No more than a block: one block, as before.
    assert block_bounds(1_217, 16_384) == [(0, 1_217)] and block_bounds(0, 16_384) == [(0, 0)]


def _clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around a few hundred centres: neighbours that mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim))
    rows = centres[rng.integers(0, len(centres), count)] + 0.6 * rng.standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _write_catalogue(url: str, model_id: str, vectors: np.ndarray) -> None:
    """Products with vectors written straight to the database, as bench/scale.py does."""
    engine = make_engine(url)
    with engine.begin() as connection:
        ids = [f"p{n:06d}" for n in range(len(vectors))]
        connection.execute(
            insert(Product),
            [
                {"id": pid, "meta": {}, "image_path": f"/nowhere/{pid}.jpg", "content_hash": pid}
                for pid in ids
            ],
        )
        connection.execute(
            insert(Embedding),
            [
                {
                    "product_id": pid,
                    "model_id": model_id,
                    "content_hash": pid,
                    "dim": vectors.shape[1],
                    "vector": vector.tobytes(),
                }
                for pid, vector in zip(ids, vectors, strict=True)
            ],
        )
    engine.dispose()


def _blocks(url: str, job_id: str) -> list[tuple[int, str, str | None, int]]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(BuildBlock.block_no, BuildBlock.state, BuildBlock.worker, BuildBlock.attempts)
            .where(BuildBlock.job_id == job_id)
            .order_by(BuildBlock.block_no)
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def _latest_job(url: str) -> str | None:
    engine = make_engine(url)
    with engine.connect() as connection:
        found = connection.scalar(select(Job.id).order_by(Job.created_at.desc()).limit(1))
    engine.dispose()
    return found


def test_two_workers_build_in_blocks_and_survive_one_killed_mid_build(
    workers: Workers, service_env: dict[str, str]
) -> None:
    env = {
        **service_env,
        # Vectors as they are (no projection to fit, no photos to read): the build alone.
        "LOOKALIKE_PCA_DIMS": "0",
        "LOOKALIKE_BUILD_BLOCK_ROWS": "1500",
        "LOOKALIKE_VISIBILITY_TIMEOUT": "5",
    }
    workers.env = env
    victim, survivor = workers.start(2)
    found = re.search(r"worker process ready with model (\S+)", victim.log.read_text())  # type: ignore[attr-defined]
    assert found, victim.log.read_text()[-2000:]  # type: ignore[attr-defined]
    model_id = found.group(1)
    url = env["LOOKALIKE_DATABASE_URL"]
    vectors = _clustered(24_000, 256, seed=7)
    _write_catalogue(url, model_id, vectors)

    cli = subprocess.Popen(
        [sys.executable, "-m", "cli", "index", "--stored"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill the victim (its pool child runs the blocks) once it has done a block and while it
    # holds another.
    child = {f":{pid}" for pid in pool_children(victim)}
    deadline = time.monotonic() + 300
    held: int | None = None
    job_id: str | None = None
    while held is None and time.monotonic() < deadline:
        job_id = _latest_job(url)
        mine = [
            (block_no, state)
            for block_no, state, worker, _ in (_blocks(url, job_id) if job_id else [])
            if worker and any(worker.endswith(c) for c in child)
        ]
        running = [block_no for block_no, state in mine if state == BlockState.RUNNING]
        if running and any(state == BlockState.DONE for _, state in mine):
            held = running[0]
        else:
            time.sleep(0.01)
    assert held is not None, "the victim never took a block"
    Workers.kill(victim)

    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err[-3000:]
    assert "succeeded" in out
    assert job_id is not None
    blocks = _blocks(url, job_id)
    assert len(blocks) == len(block_bounds(len(vectors), 1500))
    assert {state for _, state, _, _ in blocks} == {BlockState.DONE}
    workers_seen = {worker.rsplit(":", 1)[1] for _, _, worker, _ in blocks if worker}
    assert len(workers_seen) == 2  # both took blocks
    # The block the victim held ran again, on the survivor.
    assert blocks[held][3] >= 2 and not any(blocks[held][2].endswith(c) for c in child)  # type: ignore[union-attr]

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        job = session.get(Job, job_id)
        # Progress: the photos (all had vectors), then the blocks.
        assert job is not None and job.done == job.total == len(vectors) + len(blocks)
        table = _table(session)
        assert table == table_of(load_space_vectors(session, Space(model_id)), k=K)
        assert session.scalar(select(Neighbour.space_id).limit(1)) == model_id
    engine.dispose()
    assert survivor.poll() is None
    os.kill(survivor.pid, signal.SIGTERM)
