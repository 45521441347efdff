"""Neighbour-table build: Lookalike's blocked exact top-10 against the seed's V2 (scikit-learn
brute-force cosine NearestNeighbors) and V3 (a full N x N similarity table), at several N.

Vectors come from an indexed database (default: the one LOOKALIKE_DATABASE_URL names), e.g.
after indexing fashion-small, or from a saved (N, d) array with --vectors. Each method runs in
a fresh child process, so that its peak resident memory is its own; "extra" is the peak minus
the process's size with the vectors loaded. Lookalike's lists must equal a float64 brute
force computed here (scores rounded to float32 as stored, equal scores to the smaller id);
scikit-learn's float32 lists are compared with it too.

    python bench/perf/neighbours.py [--sizes 1000,10000,all]
                                    [--database-url URL | --vectors FILE.npy]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import record

K = 10


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, path: str, n: int, out: str) -> None:
    """Run one method on the first n vectors; write timings, memory and the lists."""
    vectors = np.load(path)[:n]
    base = _rss_mib()
    start = time.perf_counter()
    if method == "lookalike":
        from core.neighbours import top_k

        found = top_k(vectors, K, block_size=2048)
        positions, scores = found.positions, found.scores
    elif method == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        model = NearestNeighbors(n_neighbors=K + 1, metric="cosine", algorithm="brute")
        distances, indices = model.fit(vectors).kneighbors(vectors)
        # Drop each query itself (it may not be first when duplicates tie at distance 0).
        keep = indices != np.arange(n)[:, None]
        positions = np.array([row[m][:K] for row, m in zip(indices, keep, strict=True)])
        scores = np.array([1 - row[m][:K] for row, m in zip(distances, keep, strict=True)])
    else:  # the seed's V3: the whole similarity table in memory, then each row's top 10
        from sklearn.metrics.pairwise import cosine_similarity

        table = cosine_similarity(vectors).astype(np.float32, copy=False)
        np.fill_diagonal(table, -np.inf)
        positions = np.empty((n, K), dtype=np.int64)
        for r0 in range(0, n, 1024):
            part = np.argpartition(-table[r0 : r0 + 1024], K - 1, axis=1)[:, :K]
            top = np.take_along_axis(table[r0 : r0 + 1024], part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            positions[r0 : r0 + 1024] = np.take_along_axis(part, order, axis=1)
        scores = np.take_along_axis(table, positions, axis=1)
    seconds = time.perf_counter() - start
    np.savez(out, positions=positions, scores=scores)
    print(json.dumps({"seconds": seconds, "extra_mib": _rss_mib() - base}))


def _exact_lists(path: Path, n: int) -> np.ndarray:
    """Each row's top-K positions the slow, obvious way: the float64 dot product of the stored
    vectors (cosine, as they are L2-normalised) rounded to float32 as Lookalike stores scores,
    itself left out, equal scores to the smaller position. The lists Lookalike promises."""
    vectors = np.load(path)[:n].astype(np.float64)
    lists = np.empty((n, K), dtype=np.int64)
    for r0 in range(0, n, 1024):
        scores = (vectors[r0 : r0 + 1024] @ vectors.T).astype(np.float32)
        scores[np.arange(len(scores)), np.arange(r0, r0 + len(scores))] = -np.inf
        kth = np.partition(scores, n - K, axis=1)[:, n - K]
        for i, row in enumerate(scores):
            tied_or_better = np.flatnonzero(row >= kth[i])
            order = np.lexsort((tied_or_better, -row[tied_or_better]))
            lists[r0 + i] = tied_or_better[order[:K]]
    return lists


def _run(method: str, path: Path, n: int, work: Path) -> dict[str, float] | str:
    out = work / f"{method}-{n}.npz"
    done = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path), str(n), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1][:120]}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _database_vectors(url: str) -> tuple[str, np.ndarray]:
    """The vectors of the model with the most neighbour lists in that database."""
    from sqlalchemy import func, select

    from core.db import make_engine, make_sessionmaker
    from core.models import Neighbour
    from core.spaces import Space, load_space_vectors

    sessions = make_sessionmaker(make_engine(url))
    with sessions() as session:
        space_id = session.scalars(
            select(Neighbour.space_id).group_by(Neighbour.space_id).order_by(func.count().desc())
        ).first()
        assert space_id, "no vectors in that database"
        return space_id, load_space_vectors(session, Space.parse(space_id)).vectors


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,all")
    parser.add_argument("--database-url", default=os.environ.get("LOOKALIKE_DATABASE_URL"))
    parser.add_argument("--vectors", type=Path, help="an .npy array of L2-normalised rows")
    args = parser.parse_args()

    if args.vectors:
        label, vectors = f"vectors from {args.vectors.name}", np.load(args.vectors)
    elif args.database_url:
        label, vectors = _database_vectors(args.database_url)
    else:
        parser.error("no vectors: give --database-url (or LOOKALIKE_DATABASE_URL) or --vectors")
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    path = work / "vectors.npy"
    # A fixed shuffle, so that the smaller N are a sample of the catalogue, not its first ids.
    order = np.random.default_rng(0).permutation(len(vectors))
    np.save(path, vectors[order])
    total = len(order)
    memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20

    rows = []
    for size in args.sizes.split(","):
        n = total if size == "all" else min(int(size), total)
        ours = _run("lookalike", path, n, work)
        brute = _run("sklearn", path, n, work)
        table_mib = n * n * 4 / 2**20
        full: dict[str, float] | str
        if table_mib * 1.5 > memory_mib * 0.8:
            full = f"does not fit: the table alone is {table_mib / 1024:.1f} GiB"
        else:
            full = _run("table", path, n, work)
        equal = "n/a"
        if isinstance(ours, dict) and isinstance(brute, dict):
            a = np.load(work / f"lookalike-{n}.npz")
            b = np.load(work / f"sklearn-{n}.npz")
            exact = _exact_lists(path, n)
            wrong = int((a["positions"] != exact).any(axis=1).sum())
            gap = np.abs(a["scores"] - b["scores"]).max()
            verdict = "yes, every list" if wrong == 0 else f"NO: {wrong:,} lists differ"
            equal = (
                f"{verdict} (float64 products rounded to float32, equal scores to the smaller "
                f"id); scikit-learn's float32 lists: same ids at "
                f"{(b['positions'] == exact).mean():.2%} of entries, scores within {gap:.1e} "
                "of Lookalike's"
            )
        rows.append((n, ours, brute, full, equal))

    def cell(result: dict[str, float] | str) -> str:
        if isinstance(result, str):
            return result
        return f"{result['seconds']:.2f} s, +{result['extra_mib']:.0f} MiB"

    lines = [
        "| N | Lookalike blocked top-10 | scikit-learn brute (seed V2) | speed-up | "
        "full N x N table (seed V3) | Lookalike = float64 brute force |",
        "|---|---|---|---|---|---|",
    ]
    for n, ours, brute, full, equal in rows:
        speed = (
            f"{brute['seconds'] / ours['seconds']:.2f}x"
            if isinstance(ours, dict) and isinstance(brute, dict)
            else "n/a"
        )
        lines.append(f"| {n:,} | {cell(ours)} | {cell(brute)} | {speed} | {cell(full)} | {equal} |")
    record(
        f"Neighbour build, {label}",
        "\n".join(lines),
        "Wall time of the build and peak extra resident memory, each in its own process. "
        f"Command: `python bench/perf/neighbours.py --sizes {args.sizes}"
        + (f" --vectors {args.vectors}`." if args.vectors else "`."),
    )


if __name__ == "__main__":
    main()
