"""The full neighbour build, in blocks that any worker can take.

An index job's finalise step fixes the space and the rows (the space's vectors without twins,
in id order) and splits them into blocks of ``build_block_rows`` consecutive rows, the last ones
smaller (``block_bounds``); each block
computes the exact top-k of its rows against every row, on whichever worker takes it, and
writes the lists that differ from the table. A block that runs twice (redelivered after a
crash) computes the same lists and finds nothing to write. The block that finds every other
one done finishes the job: it removes the lists of products without a row, and checks that
the rows did not change while the blocks ran (an add, a delete or a metadata move between
groups); if they did, it rebuilds in one go (``core.neighbour_updates.rebuild_lists``), so the
table is exact whatever ran meanwhile.

Blocks compute without any lock and take the neighbour table's lock only to write, so they
run in parallel and their writes queue briefly.

An approximate build (``core.approximate``) calibrates and stores each large group's index when
it is planned; a worker opens those indexes once for all the blocks of the build it runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from core import approximate
from core.approximate import BuildSearch, IvfPlan, IvfSearch
from core.errors import JobNotFound
from core.jobs import ChunkState, JobState, get_job, state_of
from core.models import BuildBlock, BuildIndex, Job, JobChunk
from core.neighbour_table import (
    analyse_lists,
    delete_lists,
    listed_products,
    lock_neighbour_table,
    log_list_writes,
)
from core.neighbour_updates import listed_rows, rebuild_lists, write_changed
from core.neighbours import top_k
from core.space_reader import SpaceReader
from core.spaces import Space
from core.vectors import VectorSet

# A block goes through the states a chunk of photos does.
BlockState = ChunkState

# The last blocks of a build shrink: each takes this share of the rows left to plan...
TAIL_SHARE = 8
# ...down to a block of this share of a full one.
SMALLEST_SHARE = 16


def block_bounds(rows: int, block_rows: int) -> list[tuple[int, int]]:
    """The blocks of a build of ``rows`` rows, as ``[start, stop)`` ranges, sent in order.

    Full blocks of ``block_rows`` while more than ``TAIL_SHARE`` of them are left, then each
    block takes an eighth of the rows still to plan, never fewer than a sixteenth of a full
    block. With equal blocks, the worker that draws the last one runs it alone while the others
    idle (at 1M rows and two workers, one block of 30 s in a build of 17 minutes); shrinking
    blocks let every worker's last block end close to the others', whatever the number of
    workers (up to about twice ``TAIL_SHARE``, the full blocks the tail adds up to), as a
    guided schedule does without knowing it. No more than one block fits: one block.
    """
    if rows <= block_rows:
        return [(0, rows)]
    smallest = max(1, block_rows // SMALLEST_SHARE)
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < rows:
        size = min(block_rows, max(smallest, -(-(rows - start) // TAIL_SHARE)))
        bounds.append((start, min(rows, start + size)))
        start += size
    return bounds


@dataclass(frozen=True)
class BuildPlan:
    """What the blocks of one build compute from: recorded in the job's params."""

    space_id: str
    rows: int
    digest: str  # of the rows' ids and groups: the blocks and the finish check they agree
    approximate: bool = False  # the groups' indexes are in build_indexes

    def as_params(self) -> dict[str, Any]:
        return {
            "space_id": self.space_id,
            "rows": self.rows,
            "digest": self.digest,
            "approximate": self.approximate,
        }

    @classmethod
    def of(cls, job: Job) -> BuildPlan | None:
        found = (job.params or {}).get("build")
        if found is None:
            return None
        return cls(
            found["space_id"], found["rows"], found["digest"], found.get("approximate", False)
        )

    def fits(self, space: Space, vectors: VectorSet, groups: np.ndarray | None) -> bool:
        """Whether ``vectors`` (in ``space``, grouped by ``groups``) are the rows planned."""
        return (self.space_id, self.rows, self.digest) == (
            space.id,
            len(vectors.ids),
            _digest(vectors, groups),
        )


def _digest(vectors: VectorSet, groups: np.ndarray | None) -> str:
    hasher = hashlib.sha256("\n".join(vectors.ids).encode())
    if groups is not None:
        hasher.update(np.ascontiguousarray(groups, dtype=np.int64).tobytes())
    return hasher.hexdigest()[:32]


# The indexes of the build a process ran a block of last (``IndexCache``: one build's).
_OPEN_INDEXES = approximate.IndexCache()


def worker_name() -> str:
    """Who runs a block, as the block's row records it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def plan_build(
    session: Session,
    job: Job,
    space: Space,
    reader: SpaceReader,
    block_rows: int,
    search: BuildSearch,
    k: int,
) -> list[int]:
    """Split the build of ``space`` into blocks (rows of ``build_blocks``) and record the plan
    in the job; for an approximate build (as ``search`` decides for this many rows), calibrate
    and store each large group's index. A job that has a plan already keeps it (a redelivered
    finalise).

    Returns:
        The numbers of the blocks not done yet: the ones to send.
    """
    if BuildPlan.of(job) is None:
        vectors, _, groups = listed_rows(session, space, reader)
        rows = len(vectors.ids)
        approximate_build = search.approximate(rows)
        plan = BuildPlan(space.id, rows, _digest(vectors, groups), approximate_build)
        bounds = block_bounds(rows, block_rows)
        session.execute(delete(BuildBlock).where(BuildBlock.job_id == job.id))
        session.execute(delete(BuildIndex).where(BuildIndex.job_id == job.id))
        if approximate_build:
            _store_indexes(session, job.id, plan, vectors, groups, k, search.recall)
        session.add_all(
            BuildBlock(
                job_id=job.id,
                block_no=n,
                row_start=start,
                row_stop=stop,
                state=BlockState.QUEUED,
            )
            for n, (start, stop) in enumerate(bounds)
        )
        job.params = {**(job.params or {}), "build": plan.as_params()}
        flag_modified(job, "params")
        photos = session.scalar(
            select(func.coalesce(func.sum(JobChunk.total), 0)).where(JobChunk.job_id == job.id)
        )
        job.total = int(photos or 0) + len(bounds)  # progress: the photos, then the blocks
        session.flush()
    return list(
        session.scalars(
            select(BuildBlock.block_no)
            .where(BuildBlock.job_id == job.id, BuildBlock.state != BlockState.DONE)
            .order_by(BuildBlock.block_no)
        )
    )


def set_progress(session: Session, job_id: str) -> None:
    """The job's progress: its chunks' photos done plus its blocks done (set, never
    incremented, so a chunk or block that runs twice counts once)."""
    photos = select(func.coalesce(func.sum(JobChunk.done), 0)).where(JobChunk.job_id == job_id)
    blocks = (
        select(func.count())
        .select_from(BuildBlock)
        .where(BuildBlock.job_id == job_id, BuildBlock.state == BlockState.DONE)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(done=photos.scalar_subquery() + blocks.scalar_subquery())
    )


@dataclass
class BlockTimes:
    """Where a block's seconds went, for its log line: what two workers share shows there."""

    seconds: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.perf_counter, init=False, repr=False)

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._mark
        self._mark = now

    def __str__(self) -> str:
        return " ".join(f"{phase}={seconds:.1f}" for phase, seconds in self.seconds.items())


def run_block(
    session: Session,
    job_id: str,
    block_no: int,
    space: Space,
    reader: SpaceReader,
    k: int,
    search_block: int,
) -> Generator[None, None, BlockTimes]:
    """Compute one block's lists and write those that differ; the caller commits at each
    yield (once the block is marked running, so that who holds it shows). Returns where the
    block's time went: reading the rows, searching, waiting for the table's lock, writing."""
    times = BlockTimes()
    block = session.get(BuildBlock, (job_id, block_no))
    if block is None:
        raise JobNotFound(f"{job_id}/block {block_no}")
    if block.state == BlockState.DONE:
        return times
    block.state = BlockState.RUNNING
    block.attempts += 1
    block.worker = worker_name()
    yield
    plan = BuildPlan.of(get_job(session, job_id))
    vectors, _, groups = listed_rows(session, space, reader)
    times.lap("read")
    written = 0
    # Rows that changed since the plan are left to the finish, which rebuilds.
    if plan is not None and plan.fits(space, vectors, groups):
        rows = np.arange(block.row_start, block.row_stop)
        indexes = _indexes(session, job_id, plan, vectors, groups) if plan.approximate else {}
        fresh = top_k(
            vectors.vectors, k, search_block, queries=rows, groups=groups, indexes=indexes
        )
        ids = vectors.ids[block.row_start : block.row_stop]
        times.lap("search")
        before = lock_neighbour_table(session)  # only to write: blocks compute in parallel
        times.lap("lock")
        changed_ids = write_changed(session, space, vectors, ids, fresh, k, part=True)
        log_list_writes(session, before, changed_ids)
        written = len(changed_ids)
        times.lap("write")
    block.written = written
    block.state = BlockState.DONE
    set_progress(session, job_id)
    return times


def is_last_block(session: Session, job_id: str) -> bool:
    """True when every block of the job is done and the job still waits for its build: the
    caller finishes it. Takes the job's row lock, so exactly one caller gets True."""
    session.flush()
    job = get_job(session, job_id, lock=True)
    left = session.scalar(
        select(func.count())
        .select_from(BuildBlock)
        .where(BuildBlock.job_id == job_id, BuildBlock.state != BlockState.DONE)
    )
    return not left and state_of(job) is JobState.FINALISING


def finish_build(
    session: Session,
    job: Job,
    space: Space,
    reader: SpaceReader,
    k: int,
    search_block: int,
    search: BuildSearch,
) -> int:
    """Remove the lists of products without a row; when the rows changed since the plan,
    rebuild in one go (``search`` as for the plan). Returns the number of lists written or
    removed by the whole build."""
    before = lock_neighbour_table(session)
    vectors, _, groups = listed_rows(session, space, reader)
    plan = BuildPlan.of(job)
    if plan is None or not plan.fits(space, vectors, groups):
        return rebuild_lists(session, space, reader, k, search_block, search)
    orphans = sorted(listed_products(session) - set(vectors.ids))
    delete_lists(session, orphans)
    log_list_writes(session, before, orphans)
    analyse_lists(session)
    blocks = session.scalar(
        select(func.coalesce(func.sum(BuildBlock.written), 0)).where(BuildBlock.job_id == job.id)
    )
    return int(blocks or 0) + len(orphans)


def build_recall(session: Session, job_id: str) -> float | None:
    """The lowest sampled recall@k of an approximate build's indexes (None: exact)."""
    return session.scalar(select(func.min(BuildIndex.recall)).where(BuildIndex.job_id == job_id))


def _store_indexes(
    session: Session,
    job_id: str,
    plan: BuildPlan,
    vectors: VectorSet,
    groups: np.ndarray | None,
    k: int,
    recall: float,
) -> None:
    calibrated = approximate.calibrate_groups(vectors.vectors, groups, k, recall)
    for group, (found, search) in calibrated.items():
        session.add(
            BuildIndex(
                job_id=job_id,
                group_no=group,
                rows=len(search.positions),
                probe=found.probe,
                recall=found.recall,
                centroids=found.trained,
            )
        )
    opened = {group: search for group, (_, search) in calibrated.items()}
    _OPEN_INDEXES.put(_index_key(job_id, plan), opened)


def _index_key(job_id: str, plan: BuildPlan) -> str:
    return f"{job_id}:{plan.digest}"


def _indexes(
    session: Session,
    job_id: str,
    plan: BuildPlan,
    vectors: VectorSet,
    groups: np.ndarray | None,
) -> dict[int, IvfSearch]:
    """The build's stored indexes over ``vectors``, opened once per process."""

    def open_all() -> dict[int, IvfSearch]:
        rows = approximate.large_groups(len(vectors.ids), groups)
        return {
            stored.group_no: approximate.open_index(
                vectors.vectors,
                rows[stored.group_no],
                IvfPlan(stored.centroids, stored.probe, stored.recall),
            )
            for stored in session.scalars(select(BuildIndex).where(BuildIndex.job_id == job_id))
        }

    return _OPEN_INDEXES.get(_index_key(job_id, plan), open_all)
