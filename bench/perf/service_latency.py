"""Latency from a POST to its job `succeeded`, on a warm worker, PostgreSQL, fashion-dev indexed.

Starts a real worker (`lookalike worker`) and the web app (`lookalike serve`, gunicorn) against
PostgreSQL and Redis on this machine, indexes fashion-dev in-process first (or reuses a database
given with --database-url that already holds it), then alternates: POST /api/products with one
photo, and POST /api/search with one photo, each followed by polling GET /api/jobs/<id>.

    python bench/perf/service_latency.py [--repeats 15] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    create_database,
    index_in_process,
    lookalike_env,
    record,
    start_web,
    unpacked,
)


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or still starting
        time.sleep(0.2)
    sys.exit(f"{url} did not answer in {timeout}s")


def _timed_job(
    base: str, path: str, files: dict[str, tuple[str, bytes]], data: dict[str, str]
) -> float:
    start = time.perf_counter()
    response = requests.post(base + path, files=files, data=data, timeout=30)
    response.raise_for_status()
    status_url = base + response.json()["status_url"]
    while True:
        body = requests.get(status_url, timeout=30).json()
        if body["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    if body["state"] != "succeeded":
        sys.exit(f"job failed: {body}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    folder = unpacked("fashion-dev", work / "data")
    url = args.database_url or create_database()
    env = lookalike_env(LOOKALIKE_DATABASE_URL=url)
    if not args.database_url:
        index_in_process(folder, env)
    env.update(
        LOOKALIKE_BROKER_URL="redis://127.0.0.1:6379/0",
        LOOKALIKE_QUEUE=f"lookalike-bench-{uuid.uuid4().hex[:6]}",
        LOOKALIKE_MEDIA_DIR=str(work / "media"),
    )
    log = (work / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "-c", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    web, base = start_web(env, 2)
    try:
        _wait(base + "/healthz")
        photos = sorted((folder / "images").iterdir())
        add_times, search_times = [], []
        for n in range(args.repeats + 1):  # the first of each warms the worker up
            photo = photos[(n * 37) % len(photos)]
            add = _timed_job(
                base,
                "/api/products",
                {"images": (photo.name, photo.read_bytes())},
                {"id": f"bench-{uuid.uuid4().hex[:8]}"},
            )
            query = photos[(n * 53 + 11) % len(photos)]
            found = _timed_job(base, "/api/search", {"image": (query.name, query.read_bytes())}, {})
            if n:
                add_times.append(add)
                search_times.append(found)
    finally:
        for process in (worker, web):
            os.killpg(process.pid, 15)
            process.wait(timeout=30)

    def row(name: str, times: list[float]) -> str:
        ordered = sorted(times)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return (
            f"| {name} | {statistics.median(times) * 1000:.0f} ms | {p90 * 1000:.0f} ms | "
            f"{ordered[0] * 1000:.0f} ms |"
        )

    table = "\n".join(
        [
            "| request until job `succeeded` | median | p90 | min |",
            "|---|---|---|---|",
            row("POST /api/products, one photo (embed, top-10, update entered lists)", add_times),
            row("POST /api/search, one photo (embed, top-10, not added)", search_times),
        ]
    )
    record(
        "Service latency on a warm worker, PostgreSQL, fashion-dev (1,217) indexed",
        table,
        f"{args.repeats} of each, alternating, after one warm-up each; one worker process, "
        "gunicorn with 2 workers, polling every 10 ms. Command: "
        f"`python bench/perf/service_latency.py --repeats {args.repeats}`.",
    )


if __name__ == "__main__":
    main()
