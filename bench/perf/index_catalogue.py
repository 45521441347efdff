"""Index a whole catalogue with the ``lookalike index`` command, on the embedded default.

Reports wall time, images per second and the peak resident memory of the indexing process.

    python bench/perf/index_catalogue.py [--dataset fashion-dev]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import record, unpacked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-dev")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = unpacked(args.dataset, work / "data")
    count = len(list((folder / "images").iterdir()))
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_DATABASE_URL"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "index", str(folder)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"lookalike index failed:\n{done.stderr[-3000:]}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = " ".join(
        line for line in done.stdout.splitlines() if line.startswith(("products:", "lists built"))
    )
    table = (
        "| catalogue | photos | wall time | images/s | peak RSS |\n|---|---|---|---|---|\n"
        f"| {args.dataset} | {count} | {wall:.0f} s | {count / wall:.2f} | {peak_mib:,.0f} MiB |"
    )
    record(
        f"`lookalike index` of {args.dataset} on SQLite, in-process",
        table,
        f"Output: {summary}\n\nCommand: "
        f"`python bench/perf/index_catalogue.py --dataset {args.dataset}` "
        "(model load and neighbour build included in the wall time).",
    )


if __name__ == "__main__":
    main()
