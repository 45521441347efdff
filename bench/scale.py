"""Scale: the exact neighbour build of a large catalogue through real Celery workers.

Vectors come from real photos: ``fashion-dev`` is indexed once with the default recipe (its
1,217 photos, projected to the catalogue's 64-d space) and each synthetic product mixes two of
those vectors (a random share of up to half of the second) and adds Gaussian noise, so the
catalogue has the real vectors' directions and spread with no two products alike. They are
written straight to PostgreSQL (COPY) under the workers' model id with the projection off
(``LOOKALIKE_PCA_DIMS=0``): the build sees 64-d vectors, as the lists of a real catalogue
are built in its 64-d space. Embedding a million photos would take about ten hours here.

Side by side in one run:

* the build through 1 worker process, then through 2 (each a fresh, cold ``lookalike worker
  --concurrency 1`` with one OpenMP thread), from the job's finalise to its end: planning,
  every block's search and its list rows written to PostgreSQL; ``--workers 2,1,2`` builds in
  that order and also gives the 1-worker build against the mean of the two around it, which
  cancels a steady drift of the machine's speed over the three;
* faiss ``IndexFlatIP`` searching every vector's k+1 nearest in this process (1 and 2 threads):
  the search alone, no rescoring and no writes, as the reference;
* peak resident memory of every worker process, and how long a cold worker takes to be ready;
* the approximate build (``LOOKALIKE_NEIGHBOUR_SEARCH=approximate``) through 2 workers, and
  pynndescent's k-NN graph of the same vectors on 2 threads: seconds and recall@10 of each,
  measured on 2,000 sampled rows against their exact lists (as is every exact build's, 1.0);
* adds and deletes through one worker with its default threads, as deployed (``updates``).

    python bench/scale.py --products 200000
    python bench/scale.py --products 1000000 --json scale.json   # partial results as it goes
    python bench/scale.py --products 1000000 --stages approximate,pynndescent

pynndescent is the bench's own dependency: ``pip install pynndescent``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    commit,
    create_database,
    drop_database,
    group_pids,
    lookalike_env,
    machine,
    peak_mib,
    unpacked,
)

K = 10
NOISE = 0.35  # of a unit vector's length, spread over the dimensions
READY = re.compile(r"worker process ready with model (\S+)")


def base_vectors(data: Path, cache: Path) -> np.ndarray:
    """fashion-dev's vectors in its 64-d space (indexed once, then cached)."""
    if cache.is_file():
        cached: np.ndarray = np.load(cache)
        return cached
    from core.db import make_engine, make_sessionmaker
    from core.models import Neighbour
    from core.spaces import Space, load_space_vectors

    folder = unpacked("fashion-dev", data)
    cache.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{cache.with_suffix('.db')}"
    env = lookalike_env(LOOKALIKE_DATABASE_URL=url)
    print("indexing fashion-dev for its vectors", flush=True)
    subprocess.run([sys.executable, "-m", "cli", "index", str(folder)], env=env, check=True)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        from sqlalchemy import select

        space_id = session.scalar(select(Neighbour.space_id).limit(1))
        assert space_id is not None
        vectors = load_space_vectors(session, Space.parse(space_id)).vectors
    engine.dispose()
    np.save(cache, vectors.astype(np.float32))
    return vectors.astype(np.float32)


def synthetic(base: np.ndarray, count: int, seed: int = 16) -> np.ndarray:
    """``count`` unit vectors, each two base vectors mixed and perturbed."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        a, b = rng.integers(0, len(base), n), rng.integers(0, len(base), n)
        share = rng.uniform(0, 0.5, (n, 1)).astype(np.float32)
        noise = rng.standard_normal((n, base.shape[1])).astype(np.float32)
        rows = (1 - share) * base[a] + share * base[b] + NOISE / np.sqrt(base.shape[1]) * noise
        out[start : start + n] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def write_added(
    url: str, model_id: str, base: np.ndarray, count: int, run_tag: str, number: int
) -> list[str]:
    """``count`` products for the ``number``-th add of the run ``run_tag`` (hex), written as
    ``write_catalogue`` writes them; their ids. Ids and vectors are the run's own: a reused
    table must not gather copies of the same vectors run after run, whose ties send each add
    to the exact fallback (``core.neighbours``): adds took 200-330 ms after two dozen runs
    instead of 80-100 (BENCHMARKS.md, a sixth day)."""
    prefix = f"a{run_tag}{number:04d}-"
    seed = int(run_tag, 16) * 10_000 + number
    write_catalogue(url, model_id, synthetic(base, count, seed=seed), prefix)
    return [f"{prefix}{n:07d}" for n in range(count)]


def write_catalogue(url: str, model_id: str, vectors: np.ndarray, prefix: str = "s") -> float:
    """Products ``<prefix>0000000``... and their vectors, by COPY; returns the seconds taken."""
    import psycopg

    from core.models import natural_key

    started = time.perf_counter()
    # Embedded long ago, as a real catalogue's vectors were (ten hours for a million), not
    # all in the last minute: a worker's cache looks for rows created in its last minutes.
    written = "now"
    if prefix == "s":
        written = (datetime.now(UTC) - timedelta(hours=10)).isoformat()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(
            "COPY products (id, meta, image_path, content_hash, sort_key, search_text, "
            "created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(len(vectors)):
                pid = f"{prefix}{n:07d}"
                row = (pid, "{}", f"/synthetic/{pid}.jpg", pid, natural_key(pid), "", "now", "now")
                copy.write_row(row)
        with cursor.copy(
            "COPY embeddings (product_id, model_id, content_hash, dim, vector, created_at) "
            "FROM STDIN"
        ) as copy:
            for n, vector in enumerate(vectors):
                pid = f"{prefix}{n:07d}"
                copy.write_row((pid, model_id, pid, vectors.shape[1], vector.tobytes(), written))
        connection.commit()
        # What autovacuum does after a bulk load (this machine's PostgreSQL runs without it).
        cursor.execute("ANALYZE products, embeddings, photo_counts")
        connection.commit()
    return time.perf_counter() - started


class Workers:
    """``lookalike worker --concurrency 1`` processes, ``threads`` OpenMP and BLAS threads
    each (0: as many as a deployed worker gets, one per core)."""

    def __init__(self, env: dict[str, str], logs: Path, threads: int = 1) -> None:
        limit = {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
        self.env = {**env, **(limit if threads else {})}
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ready_s: list[float] = []

    def start(self, count: int) -> str:
        """Start ``count`` workers, wait until each is ready; returns their model id."""
        started = time.perf_counter()
        new = []
        for _ in range(count):
            log = self.logs / f"worker-{len(self.processes)}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--concurrency", "1"],
                env=self.env,
                cwd=ROOT,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            process.log = log  # type: ignore[attr-defined]
            self.processes.append(process)
            new.append(process)
        model_id = ""
        for process in new:
            while True:
                text = process.log.read_text(errors="replace")  # type: ignore[attr-defined]
                found = READY.search(text)
                if found and "ready." in text:
                    model_id = found.group(1)
                    break
                if process.poll() is not None:
                    sys.exit(f"worker exited:\n{text[-3000:]}")
                time.sleep(0.2)
            self.ready_s.append(time.perf_counter() - started)
        return model_id

    def peaks(self) -> list[float]:
        return [peak_mib(pid) for p in self.processes for pid in group_pids(p.pid)]

    def stop(self) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=60)
        self.processes = []


def build(env: dict[str, str], url: str) -> dict[str, float]:
    """``lookalike index --stored`` on the workers; the build's seconds (finalise to end),
    from the job's own timestamps as polled here."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE neighbours"))
    started = time.perf_counter()
    cli = subprocess.Popen(
        [sys.executable, "-m", "cli", "index", "--stored"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    finalising: float | None = None
    while cli.poll() is None:
        with engine.connect() as connection:
            state = connection.execute(
                text("SELECT state FROM jobs ORDER BY created_at DESC LIMIT 1")
            ).scalar()
        if state == "finalising" and finalising is None:
            finalising = time.perf_counter()
        time.sleep(0.2)
    ended = time.perf_counter()
    _out, err = cli.communicate()
    if cli.returncode != 0:
        sys.exit(f"index failed:\n{err[-3000:]}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM neighbours")).scalar()
        blocks = connection.execute(text("SELECT count(*) FROM build_blocks")).scalar()
    engine.dispose()
    return {
        "job_s": ended - started,
        "build_s": ended - (finalising or started),
        "list_rows": float(rows or 0),
        "blocks_total": float(blocks or 0),
    }


def faiss_reference(vectors: np.ndarray, threads: int, queries: int | None = None) -> float:
    """Seconds for faiss to search every vector's k+1 nearest among all of them; with
    ``queries``, only the first that many are searched and the time scaled to all (an exact
    flat search costs the same for every query)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    searched = min(queries or len(vectors), len(vectors))
    started = time.perf_counter()
    for start in range(0, searched, 16384):
        index.search(vectors[start : min(start + 16384, searched)], K + 1)
    return (time.perf_counter() - started) * len(vectors) / searched


SAMPLE = 2_000  # rows whose exact lists the approximate builds are scored against


def exact_sample(vectors: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The exact top-k rows of each sampled row (itself excluded)."""
    import faiss

    _, labels = faiss.knn(vectors[sample], vectors, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    pairs = zip(labels, sample, strict=True)
    return np.array([[n for n in row if n != own][:K] for row, own in pairs])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def table_sample(url: str, sample: np.ndarray) -> np.ndarray:
    """The stored lists of the sampled rows, as row numbers."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    ids = [f"s{n:07d}" for n in sample]
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT product_id, neighbour_id FROM neighbours WHERE product_id = ANY(:ids) "
                "ORDER BY product_id, rank"
            ),
            {"ids": ids},
        ).all()
    engine.dispose()
    lists: dict[str, list[int]] = {}
    for pid, neighbour in rows:
        lists.setdefault(pid, []).append(int(neighbour[1:]))
    return np.array([(lists.get(pid, []) + [-1] * K)[:K] for pid in ids])


def pynndescent_graph(
    vectors: np.ndarray, sample: np.ndarray, neighbours: int
) -> tuple[float, np.ndarray]:
    """pynndescent's graph of ``neighbours`` per vector (its first ten scored) on 2 threads:
    seconds (compiled first), sampled lists."""
    from pynndescent import NNDescent

    # Its numba kernels compile on first use (tens of seconds): not part of the build.
    NNDescent(vectors[:2000], metric="dot", n_neighbors=neighbours, n_jobs=2, random_state=16)
    started = time.perf_counter()
    graph = NNDescent(vectors, metric="dot", n_neighbors=neighbours, n_jobs=2, random_state=16)
    labels, _ = graph.neighbor_graph
    seconds = time.perf_counter() - started
    found = np.array([[n for n in labels[own] if n != own][:K] for own in sample])
    return seconds, found


def updates(
    env: dict[str, str],
    url: str,
    base: np.ndarray,
    products: int,
    logs: Path,
    twins: bool,
    threads: int = 0,
    single_adds: int = 21,
) -> dict[str, Any]:
    """Adds of 1, 10 and 100 products and deletes of 1 through one worker (``threads`` as for
    ``Workers``), the first on a cold worker (its first task reads every vector and list end),
    the others warm: seconds from the job's submission to its end as polled here (every 2 ms).
    With ``twins``, two products of the bulk load get the same photo first, as a real
    catalogue's duplicates do."""
    from sqlalchemy import select, text

    from core.db import make_engine, make_sessionmaker
    from core.jobs import JobKind, JobStep, StepCall, create_job
    from core.models import Job
    from core.settings import get_settings
    from worker.app import create_celery
    from worker.queue import CeleryQueue

    settings = get_settings(
        database_url=url, broker_url=env["LOOKALIKE_BROKER_URL"], queue=env["LOOKALIKE_QUEUE"]
    )
    queue = CeleryQueue(create_celery(settings))
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)

    parts: dict[str, list[tuple[float, float, float]]] = {}

    def run(kind: JobKind, step: JobStep, ids: list[str]) -> float:
        with sessions() as session:
            job = create_job(session, kind, {"product_ids": ids}, total=len(ids))
            job_id = job.id
            submitted = datetime.now(UTC)
            started = time.perf_counter()
            queue.submit(session, job, [StepCall(step, (job_id,))])
        while True:
            with engine.connect() as connection:
                state, error, began, ended = connection.execute(
                    select(Job.state, Job.error, Job.started_at, Job.finished_at).where(
                        Job.id == job_id
                    )
                ).one()
            if state in ("succeeded", "failed"):
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        if state != "succeeded":
            sys.exit(f"{kind.value} failed: {error}")
        # Where it went: the broker and the worker picking it up (to the step's start), the
        # step up to the job's end (set before its last commits), the rest (commits, poll).
        assert began is not None and ended is not None  # a succeeded job has both
        queued, ran = (began - submitted).total_seconds(), (ended - began).total_seconds()
        parts.setdefault(f"{kind.value}_{len(ids)}", []).append(
            (queued, ran, seconds - queued - ran)
        )
        return seconds

    made = 0
    model_id = ""
    tag = uuid.uuid4().hex[:6]

    def add(count: int) -> float:
        nonlocal made
        ids = write_added(url, model_id, base, count, tag, made)
        made += 1
        return run(JobKind.ADD_PRODUCTS, JobStep.ADD_PRODUCTS, ids)

    if twins:
        with engine.begin() as connection:
            for table, key in (("products", "id"), ("embeddings", "product_id")):
                connection.execute(
                    text(f"UPDATE {table} SET content_hash = 's0000000' WHERE {key} = 's0000001'")
                )
    # What autovacuum does on a deployed server (this machine's PostgreSQL runs without it):
    # a table reused run after run kept every list row its adds rewrote, dead, and each run's
    # adds came out slower (84 ms, then 96-106 ms within the hour; 74 ms after a VACUUM).
    vacuumed = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    vacuum_s = time.perf_counter() - vacuumed
    pool = Workers(env, logs, threads)
    model_id = pool.start(1)
    result: dict[str, Any] = {
        "threads": threads,
        "vacuum_s": vacuum_s,
        "ready_s": pool.ready_s[0],
        "cold_add_1_s": add(1),
    }
    for count, times in ((1, single_adds), (10, 3), (100, 3)):
        result[f"add_{count}_s"] = [add(count) for _ in range(times)]
    # Products of the bulk load, drawn afresh each run (a reused database lost earlier ones).
    drawn = np.random.default_rng().choice(products, 5, replace=False)
    deleted = [f"s{n:07d}" for n in sorted(drawn)]
    result["delete_1_s"] = [
        run(JobKind.DELETE_PRODUCTS, JobStep.DELETE_PRODUCTS, [pid]) for pid in deleted
    ]
    result["add_1_p50_s"] = float(np.median(result["add_1_s"]))
    # Medians of each part, warm runs only (the cold add is the first of its kind).
    result["parts_p50_s"] = {
        name: dict(
            zip(
                ("queued", "step", "after"),
                np.median(runs[1:] or runs, axis=0).tolist(),
                strict=True,
            )
        )
        for name, runs in parts.items()
    }
    result["peak_mib"] = pool.peaks()
    pool.stop()
    engine.dispose()
    return result


def approximate_graph(vectors: np.ndarray, sample: np.ndarray) -> tuple[float, np.ndarray]:
    """The approximate build's search alone, in this process on 2 threads (no database, no
    workers): calibration, then every row's lists, as pynndescent's graph is timed."""
    import faiss

    from core.approximate import calibrate
    from core.neighbours import top_k

    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    _, index = calibrate(vectors, np.arange(len(vectors)), K, 0.98)
    lists = top_k(vectors, K, 16384, indexes={0: index})
    seconds = time.perf_counter() - started
    return seconds, lists.positions[sample]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-data")
    parser.add_argument("--json", type=Path, help="Write results here after every stage.")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument(
        "--reuse-database",
        help="A database an earlier run kept (--keep-database), catalogue and lists in place: "
        "nothing is written or built, only the updates stage runs on it (kept as well).",
    )
    parser.add_argument(
        "--stages",
        default="exact,faiss,approximate,graph,pynndescent,updates",
        help="Comma-separated: exact (through --workers), faiss, approximate (2 workers), "
        "graph (the approximate search alone, in process), pynndescent, updates (adds and "
        "deletes on the last table built).",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="Worker counts of the exact builds, in turn on the same vectors; 2,1,2 also gives "
        "the 1-worker build against the mean of the 2-worker builds around it.",
    )
    parser.add_argument(
        "--twins", action="store_true", help="updates: two products share a photo first."
    )
    parser.add_argument(
        "--update-threads",
        type=int,
        default=0,
        help="updates: the worker's OpenMP and BLAS threads (0, the default: no limit, as a "
        "deployed worker runs; runs before 2026-12-07 10:00 UTC limited it to 1).",
    )
    parser.add_argument(
        "--single-adds",
        type=int,
        default=21,
        help="updates: adds of one product after the cold one (their median is the p50).",
    )
    parser.add_argument("--faiss-threads", default="1,2", help="Threads of the faiss reference.")
    parser.add_argument(
        "--faiss-queries",
        type=int,
        help="faiss searches only this many queries (against all vectors), its time scaled to "
        "all of them: the reference in minutes instead of the build's time again.",
    )
    args = parser.parse_args()
    stages = set(args.stages.split(","))

    results: dict[str, Any] = {
        "products": args.products,
        "machine": machine(),
        "commit": commit(),
    }

    def save(**stage: Any) -> None:
        results.update(stage)
        print(json.dumps(stage), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    base = base_vectors(args.data, args.data / "scale-cache" / "fashion-dev-64.npy")
    vectors = synthetic(base, args.products)
    top1 = faiss_top1(vectors[:20_000])
    save(base_vectors=len(base), dim=int(vectors.shape[1]), synthetic_top1_mean=top1)
    sample = np.sort(np.random.default_rng(5).choice(len(vectors), SAMPLE, replace=False))
    truth = exact_sample(vectors, sample)

    url = args.reuse_database or create_database()
    if args.reuse_database:
        stages &= {"updates"}
    work = Path(tempfile.mkdtemp(prefix="lookalike-scale-"))
    env = lookalike_env(
        LOOKALIKE_DATABASE_URL=url,
        LOOKALIKE_BROKER_URL=os.environ.get("LOOKALIKE_BROKER_URL", "redis://127.0.0.1:6379/0"),
        LOOKALIKE_QUEUE=f"lookalike-scale-{uuid.uuid4().hex[:6]}",
        LOOKALIKE_PCA_DIMS="0",
        LOOKALIKE_CHUNK_SIZE="100000",  # the stored vectors need no embedding: few chunks
        LOOKALIKE_NEIGHBOUR_SEARCH="exact",
    )
    counts = [int(n) for n in args.workers.split(",")] if "exact" in stages else []
    runs = [(name, count, "exact") for name, count in zip(run_names(counts), counts, strict=True)]
    if "approximate" in stages:
        runs.append(("approximate_2", 2, "approximate"))
    written = bool(args.reuse_database)
    try:
        subprocess.run(
            [sys.executable, "-m", "cli", "db", "upgrade"], env=env, check=True, capture_output=True
        )
        for name, count, mode in runs:
            (work / name).mkdir()
            run_env = {**env, "LOOKALIKE_NEIGHBOUR_SEARCH": mode}
            pool = Workers(run_env, work / name)
            model_id = pool.start(count)
            if not written:
                save(write_s=write_catalogue(url, model_id, vectors))
                written = True
            measured = build(run_env, url)
            measured["sampled_recall"] = recall(table_sample(url, sample), truth)
            save(
                **{name: measured},
                **{f"{name}_peak_mib": pool.peaks()},
                **{f"{name}_ready_s": pool.ready_s},
            )
            pool.stop()
        if "updates" in stages and written:
            (work / "updates").mkdir()
            adds = updates(
                env,
                url,
                base,
                args.products,
                work / "updates",
                args.twins,
                args.update_threads,
                args.single_adds,
            )
            save(updates=adds)
        if "faiss" in stages:
            for threads in map(int, args.faiss_threads.split(",")):
                seconds = faiss_reference(vectors, threads, args.faiss_queries)
                save(**{f"faiss_flat_{threads}_thread_s": seconds})
            if args.faiss_queries:
                save(faiss_queries_searched=args.faiss_queries)
        if "graph" in stages:
            seconds, found = approximate_graph(vectors, sample)
            measured = {"seconds": seconds, "sampled_recall": recall(found, truth)}
            save(approximate_graph_2_threads=measured)
        if "pynndescent" in stages:
            # Its default graph (k + 1 per vector), and a wider one for a recall nearer 0.98.
            for neighbours in (K + 1, 3 * K):
                seconds, found = pynndescent_graph(vectors, sample, neighbours)
                measured = {"seconds": seconds, "sampled_recall": recall(found, truth)}
                save(**{f"pynndescent_{neighbours}_2_threads": measured})
    finally:
        if not (args.keep_database or args.reuse_database):
            drop_database(url)
    if "workers_1" in results and "workers_2" in results:
        save(speedup=results["workers_1"]["build_s"] / results["workers_2"]["build_s"])
    built = [
        (count, results[name]["build_s"])
        for name, count, mode in runs
        if mode == "exact" and name in results
    ]
    if interleaved := interleaved_speedups(built):
        save(interleaved_speedups=interleaved)
    if "workers_2" in results and "faiss_flat_2_thread_s" in results:
        save(vs_faiss_2_threads=results["workers_2"]["build_s"] / results["faiss_flat_2_thread_s"])


def run_names(counts: list[int]) -> list[str]:
    """``workers_N`` for each build, ``workers_N_K`` for the Kth build through N workers."""
    names = []
    for at, count in enumerate(counts):
        seen = counts[:at].count(count)
        names.append(f"workers_{count}" + (f"_{seen + 1}" if seen else ""))
    return names


def interleaved_speedups(built: list[tuple[int, float]]) -> list[float]:
    """Each 1-worker build's seconds over the mean of the 2-worker builds just before and
    after it (``--workers 2,1,2``): a drift of the machine's speed that is steady over the
    three builds cancels, where a 1-worker build against one 2-worker build counts it whole."""
    return [
        seconds / ((built[at - 1][1] + built[at + 1][1]) / 2)
        for at, (count, seconds) in enumerate(built)
        if count == 1 and 0 < at < len(built) - 1 and built[at - 1][0] == built[at + 1][0] == 2
    ]


def faiss_top1(vectors: np.ndarray) -> float:
    """Mean similarity of each vector's nearest other one (a sanity figure for the mix)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, _ = index.search(vectors, 2)
    return float(scores[:, 1].mean())


if __name__ == "__main__":
    main()
