"""Faiss's tile of queries in the exact build's search: one process alone, and two side by side.

An exact build's block searches 16,384 queries against every vector, ``LOOKALIKE_BLOCK_SIZE``
(2,048) a ``faiss.knn`` call, one thread per worker process. Faiss scores a tile of queries
against a tile of 1,024 candidates with one BLAS product and reads the scores into each
query's heap; this script times the same search with each tile of queries asked for
(``--tiles``; faiss's default, which the build keeps, is 4,096: with 2,048 queries a call,
a tile of 2,048), in one process alone and in two processes at once (as two
workers run), rounds interleaved, on the synthetic vectors of ``bench/scale.py``. Ratios are to
faiss's default tile measured in the same round.

    python bench/perf/faiss_tiles.py --products 1000000 --queries 8192 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.scale import K, base_vectors, synthetic
from core.approximate import CANDIDATES_OVER

FAISS_DEFAULT_TILE = 4096


def child(vectors_path: str, tile: int, offset: int, queries: int, per_call: int) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    faiss.cvar.distance_compute_blas_query_bs = tile
    base = np.load(vectors_path)
    batch = base[offset : offset + queries]
    wanted = K + CANDIDATES_OVER + 1  # as core.neighbours asks: its margin, and itself
    started = time.perf_counter()
    for start in range(0, queries, per_call):
        part = batch[start : start + per_call]
        faiss.knn(part, base, wanted, metric=faiss.METRIC_INNER_PRODUCT)
    print(time.perf_counter() - started)


def timed(
    vectors_path: Path, tile: int, offsets: list[int], queries: int, per_call: int
) -> list[float]:
    """Seconds of each of ``len(offsets)`` processes searching at once."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(vectors_path),
                str(tile),
                str(at),
                str(queries),
                str(per_call),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for at in offsets
    ]
    return [float(proc.communicate()[0].split()[-1]) for proc in procs]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=8192)
    parser.add_argument("--per-call", type=int, default=2048, help="queries per faiss.knn call")
    parser.add_argument("--tiles", default=f"{FAISS_DEFAULT_TILE},1024,512")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-data")
    args = parser.parse_args()
    tiles = [int(t) for t in args.tiles.split(",")]
    if FAISS_DEFAULT_TILE not in tiles:
        tiles.insert(0, FAISS_DEFAULT_TILE)
    base = base_vectors(args.data, args.data / "scale-cache" / "fashion-dev-64.npy")
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "vectors.npy"
        np.save(path, synthetic(base, args.products))
        alone: dict[int, list[float]] = {t: [] for t in tiles}
        pair: dict[int, list[float]] = {t: [] for t in tiles}
        for round_no in range(args.rounds):
            for tile in tiles:
                alone[tile] += timed(path, tile, [0], args.queries, args.per_call)
                pair[tile] += timed(
                    path, tile, [0, args.products // 2], args.queries, args.per_call
                )
                print(
                    f"round {round_no} tile {tile}: alone {alone[tile][-1]:.2f} s, "
                    f"pair {pair[tile][-2]:.2f} / {pair[tile][-1]:.2f} s",
                    flush=True,
                )
    ref_alone = statistics.median(alone[FAISS_DEFAULT_TILE])
    ref_pair = statistics.median(pair[FAISS_DEFAULT_TILE])
    print(
        f"\n{args.products:,} x 64 vectors, {args.queries:,} queries per process, "
        f"{args.per_call:,} a call, "
        f"{args.rounds} rounds; medians (least to most)"
    )
    print("| tile of queries | alone | two at once | two / alone | alone vs 4,096 | two vs 4,096 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for tile in tiles:
        a, p = statistics.median(alone[tile]), statistics.median(pair[tile])
        print(
            f"| {tile:,} | {a:.2f} s ({min(alone[tile]):.2f}-{max(alone[tile]):.2f}) "
            f"| {p:.2f} s ({min(pair[tile]):.2f}-{max(pair[tile]):.2f}) | {p / a:.3f} "
            f"| {a / ref_alone:.3f} | {p / ref_pair:.3f} |"
        )


if __name__ == "__main__":
    main()
