"""End to end: index a whole catalogue through the queue with several workers, on PostgreSQL.

Starts N `lookalike worker` processes against Redis and a fresh PostgreSQL database, runs
`lookalike index PATH` with the broker set (products registered, chunks queued, progress
followed), and reports wall time, images/s and the peak resident memory of every process
(the CLI, and each worker's main and pool processes, from /proc VmHWM).

    python bench/perf/index_queue.py [--dataset fashion-small] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    create_database,
    drop_database,
    group_pids,
    lookalike_env,
    peak_mib,
    record,
    unpacked,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-small")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="Leave the indexed database for bench/perf/neighbours.py and friends.",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = unpacked(args.dataset, work / "data")
    count = len(list((folder / "images").iterdir()))
    url = create_database()
    env = lookalike_env(
        LOOKALIKE_DATABASE_URL=url,
        LOOKALIKE_BROKER_URL=os.environ.get("LOOKALIKE_BROKER_URL", "redis://127.0.0.1:6379/0"),
        LOOKALIKE_QUEUE=f"lookalike-bench-{uuid.uuid4().hex[:6]}",
    )
    subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"],
        env=env,
        check=True,
        capture_output=True,
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--concurrency", "1"],
            env=env,
            stdout=(work / f"worker-{n}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for n in range(args.workers)
    ]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            logs = [
                (work / f"worker-{n}.log").read_text(errors="replace") for n in range(args.workers)
            ]
            if all("worker process ready" in log for log in logs):
                break
            time.sleep(0.5)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "cli", "index", str(folder)],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"index failed:\n{done.stderr[-3000:]}")
        cli_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        peaks = {
            f"worker {n} pid {pid}": peak_mib(pid)
            for n, process in enumerate(workers)
            for pid in group_pids(process.pid)
        }
    finally:
        for process in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process in workers:
            process.wait(timeout=60)
        if not args.keep_database:
            drop_database(url)
    summary = done.stdout.strip().splitlines()[-1]
    memory = ", ".join(f"{label}: {mib:,.0f} MiB" for label, mib in peaks.items())
    worst = max([cli_peak, *peaks.values()])
    table = (
        "| catalogue | photos | workers | wall time | images/s | peak RSS, largest process | "
        "target | met? |\n|---|---|---|---|---|---|---|---|\n"
        f"| {args.dataset} | {count:,} | {args.workers} | {wall:.0f} s | {count / wall:.1f} | "
        f"{worst:,.0f} MiB | every process < 3 GiB | {'yes' if worst < 3072 else 'NO'} |"
    )
    record(
        f"End-to-end indexing through the queue, {args.dataset}, PostgreSQL",
        table,
        f"Peak RSS per process: CLI {cli_peak:,.0f} MiB; {memory}.\n\nSettings: "
        + ", ".join(
            f"{k}={v}"
            for k, v in sorted(os.environ.items())
            if k.startswith("LOOKALIKE_") and k != "LOOKALIKE_DATABASE_URL"
        )
        + f"\n\nOutput: {summary}\n\nDatabase kept: {url if args.keep_database else 'no'}."
        f" Command: `python bench/perf/index_queue.py --dataset {args.dataset} "
        f"--workers {args.workers}`.",
    )


if __name__ == "__main__":
    main()
