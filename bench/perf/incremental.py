"""Adding products to an indexed catalogue: the incremental update against a full rebuild.

For m in 1, 10, 100: m random products are taken out (their vectors deleted, the table rebuilt
without them), then put back the way an add job stores them (inserted, so created now). From
that same starting point `update_lists`, what the worker's add task runs, is timed:

* warm: with the worker's `SpaceCache` as earlier tasks left it (it last saw the catalogue
  without the m products: it must find them, check that nothing else changed, and read the lists
  they may enter); --warmup runs first, untimed (a worker past its first tasks: psycopg has
  prepared its statements, memory is allocated), then the median of --repeats runs, each rolled
  back;
* cold: with an empty cache, as in a worker process's first task (every vector and every list's
  last entry read from SQL); one run, rolled back;

then the warm run once more, committed (its commit timed on its own), and a full rebuild
(`rebuild_lists`, everything read from SQL, no cache), which must find nothing to change:
that shows the incremental table is identical to a rebuild.

The database is changed while this runs and put back after each m: point it at a copy
(`createdb -T lookalike_44k lookalike_44k_incr`). It is first upgraded to the latest schema,
and on PostgreSQL analysed.

    python bench/perf/incremental.py --database-url URL [--adds 1,10,100] [--repeats 9] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import record


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adds", default="1,10,100")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("LOOKALIKE_DATABASE_URL"))
    args = parser.parse_args()

    from sqlalchemy import delete, func, insert, select, text

    from core.db import make_engine, make_sessionmaker
    from core.models import Embedding, Neighbour
    from core.neighbour_updates import rebuild_lists, update_lists
    from core.settings import get_settings
    from core.space_cache import SpaceCache
    from core.space_reader import SqlSpaceReader
    from core.spaces import Space
    from migrations import upgrade

    settings = get_settings()
    k, block = settings.neighbours, settings.block_size
    upgrade(args.database_url)
    engine = make_engine(args.database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        if engine.dialect.name == "postgresql":
            # Planner statistics, as autovacuum keeps them (this server runs with it off, and a
            # database copied from a template has none): without them PostgreSQL reads all
            # 440k list rows to find a few hundred.
            session.execute(text("ANALYZE products, embeddings, neighbours"))
            session.commit()
        space_id = session.scalars(
            select(Neighbour.space_id).group_by(Neighbour.space_id).order_by(func.count().desc())
        ).first()
        assert space_id, "no neighbour lists in that database"
        # Vectors are stored under the embedding model; the lists live in its projected space.
        space = Space.parse(space_id)
        embedding_model = space.embedding_model_id
        ids = sorted(
            session.scalars(
                select(Embedding.product_id).where(Embedding.model_id == embedding_model)
            )
        )
    worker_cache = SpaceCache()  # one for the whole run, as a worker process holds one
    columns = [c for c in Embedding.__table__.columns if c.name != "created_at"]

    def update(session: Any, cache: SpaceCache) -> int:
        written = update_lists(session, space, cache, k, block)
        session.flush()
        return written

    rng = np.random.default_rng(1)
    rows = []
    for m in (int(value) for value in args.adds.split(",")):
        chosen = sorted(rng.choice(ids, size=m, replace=False).tolist())
        with sessions() as session:
            saved = [
                # created_at left out: stored again now, as an add job stores new vectors.
                {c.name: getattr(e, c.name) for c in columns}
                for e in session.scalars(
                    select(Embedding).where(
                        Embedding.model_id == embedding_model, Embedding.product_id.in_(chosen)
                    )
                )
            ]
            session.execute(
                delete(Embedding).where(
                    Embedding.model_id == embedding_model, Embedding.product_id.in_(chosen)
                )
            )
            rebuild_lists(session, space, SqlSpaceReader(), k, block)  # without them
            session.commit()
            # The worker's cache as after earlier tasks: it has seen this catalogue.
            assert update(session, worker_cache) == 0
            session.commit()
            session.execute(insert(Embedding), saved)
            session.commit()

            cold, cold_written = timed(lambda: update(session, SpaceCache()))
            session.rollback()
            warm_runs = []
            for _ in range(args.warmup):
                update(session, worker_cache)
                session.rollback()
            for _ in range(args.repeats):
                seconds, warm_written = timed(lambda: update(session, worker_cache))
                session.rollback()
                warm_runs.append(seconds)
                assert warm_written == cold_written
            written = update(session, worker_cache)
            commit, _ = timed(session.commit)
            assert written == cold_written

            full, left = timed(lambda: rebuild_lists(session, space, SqlSpaceReader(), k, block))
            start = time.perf_counter()
            session.commit()
            full += time.perf_counter() - start
        rows.append((m, warm_runs, commit, cold, written, full, left))

    lines = [
        "| products added | incremental, warm cache: median (fastest to slowest) | commit "
        "| incremental, cold cache "
        "| lists written | full rebuild | speed-up, warm + commit (cold) "
        "| identical (rebuild changed nothing) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, warm_runs, commit, cold, written, full, left in rows:
        warm = statistics.median(warm_runs)
        lines.append(
            f"| {m} | {warm * 1000:.0f} ms ({min(warm_runs) * 1000:.0f} to "
            f"{max(warm_runs) * 1000:.0f} ms) | {commit * 1000:.0f} ms | {cold:.2f} s | {written} "
            f"| {full:.1f} s | {full / (warm + commit):.0f}x ({full / cold:.0f}x) "
            f"| {'yes' if left == 0 else f'NO: {left} lists differ'} |"
        )
    record(
        f"Incremental add against full rebuild, {len(ids):,} products, {space_id}",
        "\n".join(lines),
        "Warm: the worker's SpaceCache as earlier tasks left it, after "
        f"{args.warmup} untimed runs, {args.repeats} timed; cold: an empty cache (a worker's "
        "first task), one run. Both "
        "include checking the cache against SQL, reading the lists that may change and writing "
        "those that do (flushed; the commit is timed once, after the last warm run). The full "
        "rebuild reads every vector and list from SQL and includes its commit. On "
        f"{engine.dialect.name}, analysed first. Command: `python bench/perf/incremental.py "
        f"--adds {args.adds} --repeats {args.repeats} --warmup {args.warmup}`.",
    )


if __name__ == "__main__":
    main()
