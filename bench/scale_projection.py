"""Scale of the projection: the catalogue's PCA fit and its projected rows at a million products.

At a million products the stored embeddings are 4 GB (1024-d float32). An index job's finalise
fits the projection in one streaming pass over them (``core.spaces.resolve_space``: the
covariance accumulated a chunk at a time) and writes every projected row (``core.projected.fill``,
a second pass), so that every later reader reads 256 MB of 64-d rows, never the embeddings.

Vectors come from real photos as in ``bench/scale.py``, one level down: ``fashion-dev``'s stored
1024-d embeddings (indexed once with the default recipe), each synthetic product two of them
mixed and perturbed with Gaussian noise; written straight to PostgreSQL (COPY) under the model
id the workers embed with. The projection's source directions (``LOOKALIKE_SOURCE_DIMS``) are
off here: they come from a fixed sample of photos embedded again (a few hundred, whatever the
catalogue's size), and these products have no photos.

Side by side in one run, on one fresh database:

* a bare pass over the stored embeddings (psycopg, the vector column streamed to this process
  with a server-side cursor, bytes counted): the floor any pass over them has on this machine;
* the fit and the fill, as the finalise runs them, in a fresh process: seconds of each, and the
  process's peak resident memory after each;
* a cold read of the space as a worker's first task does (``core.projected.read_space``): the
  projected rows, seconds and peak memory;
* with ``--build``: the whole ``lookalike index --stored`` through 2 cold workers (approximate
  search), seconds and the peak memory of every worker process.

    python bench/scale_projection.py --products 1000000 --json projection.json
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import commit, create_database, drop_database, lookalike_env, machine
from bench.common import peak_mib as common_peak_mib
from bench.scale import Workers, base_vectors, build, synthetic, write_catalogue


def raw_base(data: Path) -> tuple[str, np.ndarray]:
    """fashion-dev's stored embeddings (model id, rows), from the database that
    ``bench.scale.base_vectors`` indexed."""
    cache = data / "scale-cache" / "fashion-dev-64.npy"
    base_vectors(data, cache)
    with sqlite3.connect(cache.with_suffix(".db")) as connection:
        rows = connection.execute("SELECT model_id, dim, vector FROM embeddings").fetchall()
    model_ids = {row[0] for row in rows}
    if len(model_ids) != 1:
        sys.exit(f"expected one embedding model in the cache, found {sorted(model_ids)}")
    matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4")
    return rows[0][0], matrix.reshape(len(rows), rows[0][1]).astype(np.float32)


def bare_pass(url: str, model_id: str) -> dict[str, float]:
    """Every stored vector of ``model_id`` streamed to this process, nothing done with it."""
    import psycopg

    started = time.perf_counter()
    total = rows = 0
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection, connection.cursor(name="bare_pass") as cursor:
        cursor.itersize = 8192
        cursor.execute("SELECT vector FROM embeddings WHERE model_id = %s", (model_id,))
        for (vector,) in cursor:
            total += len(vector)
            rows += 1
    return {"seconds": time.perf_counter() - started, "rows": rows, "gigabytes": total / 1e9}


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: its own since exec, where ru_maxrss
    carries the forking parent's)."""
    return common_peak_mib(os.getpid())


def fit_and_fill(url: str, model_id: str) -> dict[str, float]:
    """In this (fresh) process: the fit, the fill and a cold read, as the job steps run them."""
    from core import projected
    from core.db import make_engine, make_sessionmaker
    from core.settings import get_settings
    from core.spaces import ProjectionSettings, projection_of, resolve_space

    wanted = ProjectionSettings.of(get_settings())
    engine = make_engine(url)
    measured: dict[str, float] = {"start_peak_mib": peak_mib()}
    with make_sessionmaker(engine)() as session:
        started = time.perf_counter()
        space = resolve_space(session, model_id, wanted)
        session.commit()
        measured.update(fit_s=time.perf_counter() - started, fit_peak_mib=peak_mib())
        projection = projection_of(session, space)
        assert projection is not None and space.projection_tag is not None
        started = time.perf_counter()
        written = projected.fill(session, model_id, space.projection_tag, projection)
        session.commit()
        measured.update(
            fill_s=time.perf_counter() - started, fill_peak_mib=peak_mib(), filled=written
        )
    engine.dispose()
    return measured


def cold_read(url: str, model_id: str) -> dict[str, float]:
    """In this (fresh) process: every row of the space, as a cold worker reads it."""
    from core import projected
    from core.db import make_engine, make_sessionmaker
    from core.settings import get_settings
    from core.spaces import ProjectionSettings, projection_of, resolve_space

    wanted = ProjectionSettings.of(get_settings())
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        space = resolve_space(session, model_id, wanted, fit=False)
        projection = projection_of(session, space)
        started = time.perf_counter()
        read = projected.read_space(session, model_id, space.projection_tag, projection)
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "rows": len(read.vectors.ids), "peak_mib": peak_mib()}


def child(step: str, url: str, model_id: str) -> dict[str, float]:
    """``step`` run in a fresh interpreter, so that its peak memory is its own."""
    found = subprocess.run(
        [sys.executable, __file__, "--child", step, "--url", url, "--model-id", model_id],
        env=lookalike_env(LOOKALIKE_DATABASE_URL=url, LOOKALIKE_SOURCE_DIMS="0"),
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        sys.exit(f"{step} failed:\n{found.stderr[-3000:]}")
    measured: dict[str, float] = json.loads(found.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-data")
    parser.add_argument("--json", type=Path, help="Write results here after every stage.")
    parser.add_argument("--build", action="store_true", help="Also the whole job on 2 workers.")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step = {"fit_and_fill": fit_and_fill, "cold_read": cold_read}[args.child]
        print(json.dumps(step(args.url, args.model_id)))
        return

    results: dict[str, Any] = {"products": args.products, "machine": machine(), "commit": commit()}

    def save(**stage: Any) -> None:
        results.update(stage)
        print(json.dumps(stage), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    model_id, base = raw_base(args.data)
    vectors = synthetic(base, args.products)
    save(base_vectors=len(base), dim=int(vectors.shape[1]), model_id=model_id)
    url = create_database()
    env = lookalike_env(LOOKALIKE_DATABASE_URL=url, LOOKALIKE_SOURCE_DIMS="0")
    try:
        subprocess.run(
            [sys.executable, "-m", "cli", "db", "upgrade"], env=env, check=True, capture_output=True
        )
        save(write_s=write_catalogue(url, model_id, vectors))
        del vectors
        save(bare_pass=bare_pass(url, model_id))
        save(fit_and_fill=child("fit_and_fill", url, model_id))
        save(cold_read=child("cold_read", url, model_id))
        save(bare_pass_again=bare_pass(url, model_id))
        if args.build:
            build_env = {
                **env,
                "LOOKALIKE_BROKER_URL": "redis://127.0.0.1:6379/0",
                "LOOKALIKE_QUEUE": f"lookalike-projection-{time.time_ns() % 10**6}",
                "LOOKALIKE_CHUNK_SIZE": "100000",
                "LOOKALIKE_NEIGHBOUR_SEARCH": "approximate",
            }
            work = Path(tempfile.mkdtemp(prefix="lookalike-projection-"))
            pool = Workers(build_env, work)
            pool.start(2)
            measured = build(build_env, url)
            save(build_2_workers=measured, build_peak_mib=pool.peaks(), ready_s=pool.ready_s)
            pool.stop()
    finally:
        if not args.keep_database:
            drop_database(url)
    fit = results["fit_and_fill"]
    floor = min(results["bare_pass"]["seconds"], results["bare_pass_again"]["seconds"])
    save(fit_vs_bare_pass=fit["fit_s"] / floor, fill_vs_bare_pass=fit["fill_s"] / floor)


if __name__ == "__main__":
    main()
