"""The read path under load: GET /api/products/<id>/similar against gunicorn, and the plain SQL
query from README against PostgreSQL, each at a fixed rate and at saturation, beside the
ceiling of the same web stack on this machine.

Needs a PostgreSQL database with a catalogue indexed (--database-url; the 44k fashion-small
one from `bench/perf/index_queue.py --keep-database`). Every request asks for a random product.

- Fixed rate: an open-loop client (bench/perf/open_loop.py) sends --rate requests/s on schedule
  and times each from when it was due, so queueing counts (wrk would send less when the
  server slows: coordinated omission).
- Saturation: wrk on loopback, 64 kept-alive connections, closed loop.
- Ceiling: the same Flask under the same gunicorn settings answering a fixed body of the same
  size with no database (bench/perf/fixed_body_app.py), saturated the same way, in the same run.
- SQL: pgbench (--rate for the fixed rate), over a temporary table of the product ids.

Each HTTP measurement runs --repeats times, interleaved, after a warm-up; the table gives
medians. CPU per request at saturation is read from /proc (gunicorn, PostgreSQL) and from
wrk's own usage.

    python bench/perf/read_path.py --database-url URL [--rate 500] [--seconds 15] [--repeats 3]
        [--web-workers 3] [--web-threads 2] [--no-access-log]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (
    ROOT,
    cpu_seconds,
    free_port,
    listed_ids,
    lookalike_env,
    postgres_pids,
    record,
    start_web,
)
from bench.perf.open_loop import open_loop

README_QUERY = (
    "SELECT n.rank, n.neighbour_id, n.score, p.meta FROM neighbours n "
    "JOIN products p ON p.id = n.neighbour_id WHERE n.product_id = {id} ORDER BY n.rank;"
)
WRK_SCRIPT = """
local ids = {{{ids}}}
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/products/" .. ids[math.random(#ids)] .. "/similar")
end
"""


def _group(pgid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def _wrk(base: str, script: Path, connections: int, seconds: int, server: int) -> dict[str, float]:
    """wrk at saturation, with the CPU each party spent per request."""
    servers, databases = _group(server), postgres_pids()
    before = (cpu_seconds(servers), cpu_seconds(databases))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match[1]) * units[match[2]]

    count = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50": latency("50%"),
        "p99": latency("99%"),
        "errors": float(errors[1]) if errors else 0.0,
        "cpu_server_ms": 1000 * (cpu_seconds(servers) - before[0]) / count,
        "cpu_database_ms": 1000 * (cpu_seconds(databases) - before[1]) / count,
        "cpu_client_ms": 1000
        * (after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime)
        / count,
    }


def _pgbench(
    url: str, script: Path, clients: int, seconds: int, rate: int | None, work: Path
) -> dict[str, float]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    logs = work / f"pgbench-{rate or 'max'}"
    logs.mkdir(exist_ok=True)
    args = [
        "pgbench",
        "-n",
        "-f",
        str(script),
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(seconds),
        "--log",
        f"--log-prefix={logs}/log",
        dsn,
    ]
    if rate:
        args[1:1] = ["-R", str(rate)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    latencies = sorted(
        int(line.split()[2]) / 1000.0
        for path in logs.iterdir()
        for line in path.read_text().splitlines()
    )
    tps = float(re.search(r"tps = ([\d.]+)", out)[1])  # type: ignore[index]
    return {
        "rps": tps,
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "errors": 0.0,
    }


def _start_ceiling(
    body: Path, worker_class: str, workers: int, threads: int, access_log: bool
) -> tuple[subprocess.Popen[bytes], str]:
    """bench/perf/fixed_body_app.py under gunicorn with the settings `lookalike serve` uses."""
    from cli.main import gunicorn_options

    options = gunicorn_options(worker_class, workers, threads, 1000, access_log)
    port = free_port()
    bind = ["--bind", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *options, *bind, "bench.perf.fixed_body_app:app"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LOOKALIKE_BENCH_BODY": str(body)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return server, f"http://127.0.0.1:{port}"


def _fixed_rate(template: str, ids: list[str], rate: int, seconds: int) -> dict[str, float]:
    """Open-loop GETs at ``rate`` for ``seconds``: what was served, its latencies, its errors."""
    result = open_loop(template, ids, rate, seconds)
    return {
        "rps": result.served,
        "p50": result.percentile(0.5),
        "p99": result.percentile(0.99),
        "p999": result.percentile(0.999),
        "errors": float(result.errors),
        "client_cpu": result.client_cpu_s / seconds,
    }


class WriteLoad:
    """A `lookalike worker` and add jobs of new photos for it, beside the reads: the first job
    adds ``count`` products, each later one gives them other photos (replacements: embedded
    and listed again); afterwards they are deleted through the API."""

    def __init__(self, env: dict[str, str], work: Path, photos: list[Path], count: int) -> None:
        self.photos, self.count = photos, count
        self.ids = [f"bench-write-{n}" for n in range(count)]
        log = work / "worker.log"
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--concurrency", "1"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not all(
            word in log.read_text(errors="replace")
            for word in ("worker process ready with model", "ready.")
        ):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)

    def start(self, base: str, run: int) -> tuple[str, float]:
        """Post the photos of ``run``; the job's status address and when it was posted."""
        chosen = self.photos[run * self.count : (run + 1) * self.count]
        files = [("images", (p.name, p.read_bytes())) for p in chosen]
        started = time.perf_counter()
        response = requests.post(
            f"{base}/api/products", files=files, data={"id": self.ids}, timeout=60
        )
        response.raise_for_status()
        return base + response.json()["status_url"], started

    @staticmethod
    def finish(base: str, job: tuple[str, float]) -> float:
        """Seconds from the post to the job's end."""
        status_url, started = job
        while (state := requests.get(status_url, timeout=30).json()["state"]) not in (
            "succeeded",
            "failed",
        ):
            time.sleep(0.1)
        if state != "succeeded":
            raise RuntimeError(f"add job {status_url} {state}")
        return time.perf_counter() - started

    def clean_up(self, base: str) -> None:
        for product_id in self.ids:
            response = requests.delete(f"{base}/api/products/{product_id}", timeout=30)
            if response.status_code == 202:
                self.finish(base, (base + response.json()["status_url"], 0.0))

    def stop(self) -> None:
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)


def wait_ready(url: str) -> bytes:
    """The body of ``url`` once it answers 2xx (within a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = requests.get(url, timeout=10)
            if response.ok:
                return response.content
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent")
    parser.add_argument("--web-threads", type=int, default=2, help="gthread only")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--write-photos",
        type=Path,
        help="a folder of photos: each run also measures the fixed rate while an add job of "
        "--write-count of them runs on a `lookalike worker` on this machine",
    )
    parser.add_argument("--write-count", type=int, default=100)
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    ids = listed_ids(args.database_url)
    engine = create_engine(args.database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bench_ids"))
        connection.execute(text("CREATE TABLE bench_ids (n integer PRIMARY KEY, id text)"))
        connection.execute(
            text("INSERT INTO bench_ids VALUES (:n, :id)"),
            [{"n": n, "id": pid} for n, pid in enumerate(ids)],
        )
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))

    # Plain SQL, through pgbench.
    sql = work / "query.sql"
    sql.write_text(
        f"\\set r random(0, {len(ids) - 1})\n"
        + README_QUERY.format(id="(SELECT id FROM bench_ids WHERE n = :r)")
    )
    sql_fixed = _pgbench(args.database_url, sql, 8, args.seconds, args.rate, work)
    sql_max = _pgbench(args.database_url, sql, 8, args.seconds, None, work)

    # HTTP: Lookalike and the ceiling side by side, loaded in turn.
    env = lookalike_env(LOOKALIKE_DATABASE_URL=args.database_url)
    writer: WriteLoad | None = None
    if args.write_photos is not None:
        env.update(
            LOOKALIKE_BROKER_URL="redis://127.0.0.1:6379/0",
            LOOKALIKE_QUEUE=f"lookalike-bench-{os.getpid()}",
            LOOKALIKE_MEDIA_DIR=str(work / "media"),
        )
        writer = WriteLoad(env, work, sorted(args.write_photos.iterdir()), args.write_count)
    web, base = start_web(
        env, args.web_workers, args.web_threads, args.access_log, args.worker_class
    )
    ceiling: subprocess.Popen[bytes] | None = None
    fixed: list[dict[str, float]] = []
    ceiling_fixed: list[dict[str, float]] = []
    under_writes: list[dict[str, float]] = []
    saturated: list[dict[str, float]] = []
    ceilings: list[dict[str, float]] = []
    try:
        body = work / "body.json"
        body.write_bytes(wait_ready(f"{base}/api/products/{ids[0]}/similar"))
        ceiling, ceiling_base = _start_ceiling(
            body, args.worker_class, args.web_workers, args.web_threads, args.access_log
        )
        wait_ready(f"{ceiling_base}/api/products/{ids[0]}/similar")
        script = work / "random.lua"
        script.write_text(WRK_SCRIPT.format(ids=",".join(f'"{pid}"' for pid in ids)))
        template = base + "/api/products/{id}/similar"
        # Warm-up, not counted: every worker process opens its connections and prepares.
        open_loop(template, ids, args.rate, 5)
        _wrk(ceiling_base, script, 64, 3, ceiling.pid)
        for _ in range(args.repeats):
            fixed.append(_fixed_rate(template, ids, args.rate, args.seconds))
            # The same client against the ceiling: what the machine, the client and the web
            # stack alone leave of a 10 ms p99.
            ceiling_template = ceiling_base + "/api/products/{id}/similar"
            ceiling_fixed.append(_fixed_rate(ceiling_template, ids, args.rate, args.seconds))
            if writer is not None:
                job = writer.start(base, len(under_writes))
                loaded = _fixed_rate(template, ids, args.rate, args.seconds)
                loaded["job_s"] = writer.finish(base, job)
                under_writes.append(loaded)
            saturated.append(_wrk(base, script, 64, args.seconds, web.pid))
            ceilings.append(_wrk(ceiling_base, script, 64, args.seconds, ceiling.pid))
        if writer is not None:
            writer.clean_up(base)
    finally:
        if writer is not None:
            writer.stop()
        for server in (web, ceiling):
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS bench_ids"))
        engine.dispose()

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    def spread(runs: list[dict[str, float]], key: str, fmt: str) -> str:
        return ", ".join(format(run[key], fmt) for run in runs)

    def row(name: str, runs: list[dict[str, float]], target: str, met: bool | None) -> str:
        verdict = "" if met is None else ("yes" if met else "NO")
        p999 = (
            f"{median(runs, 'p999'):.2f} ms ({spread(runs, 'p999', '.2f')})"
            if "p999" in runs[0]
            else ""
        )
        return (
            f"| {name} | {median(runs, 'rps'):,.0f} ({spread(runs, 'rps', ',.0f')}) | "
            f"{median(runs, 'p50'):.2f} ms | {median(runs, 'p99'):.2f} ms "
            f"({spread(runs, 'p99', '.2f')}) | {p999} | {sum(r['errors'] for r in runs):.0f} | "
            f"{target} | {verdict} |"
        )

    served_all = all(run["rps"] >= 0.98 * args.rate for run in fixed)
    ratio = median(saturated, "rps") / median(ceilings, "rps")
    ratios = ", ".join(
        f"{s['rps'] / c['rps']:.2f}" for s, c in zip(saturated, ceilings, strict=True)
    )
    table = "\n".join(
        [
            "| load | requests/s: median (each run) | p50 | p99: median (each run) "
            "| p99.9 (open loop) | errors | target | met? |",
            "|---|---|---|---|---|---|---|---|",
            row(
                f"GET /api/products/<id>/similar, {args.rate}/s offered (open loop)",
                fixed,
                "p99 < 10 ms at 500/s, every run",
                max(run["p99"] for run in fixed) < 10 and args.rate >= 500 and served_all,
            ),
            *(
                [
                    row(
                        f"the same while an add job of {args.write_count} photos runs on a "
                        f"worker (job: {spread(under_writes, 'job_s', '.1f')} s)",
                        under_writes,
                        "reported",
                        None,
                    )
                ]
                if under_writes
                else []
            ),
            row(
                "GET /api/products/<id>/similar, saturation (wrk, 64 connections)",
                saturated,
                ">= 1,500 requests/s",
                median(saturated, "rps") >= 1500,
            ),
            row(
                f"ceiling: same gunicorn + Flask, fixed body, no database, {args.rate}/s offered "
                "(open loop)",
                ceiling_fixed,
                "",
                None,
            ),
            row(
                "ceiling: same gunicorn + Flask, fixed body, no database (wrk, 64 connections)",
                ceilings,
                "",
                None,
            ),
            f"| ratio to the ceiling, saturation | {ratio:.2f} ({ratios}) | | | | | >= 0.7 "
            f"| {'yes' if ratio >= 0.7 else 'NO'} |",
            row(f"README's SQL query, {args.rate}/s offered (pgbench)", [sql_fixed], "", None),
            row("README's SQL query, saturation (pgbench, 8 clients)", [sql_max], "", None),
        ]
    )
    arrangement = (
        "gevent worker processes"
        if args.worker_class == "gevent"
        else f"gthread workers of {args.web_threads} threads"
    )
    threads_option = f" --web-threads {args.web_threads}" if args.worker_class == "gthread" else ""
    record(
        f"Read path on PostgreSQL, {len(ids):,} products with lists",
        table,
        f"Lookalike at saturation serves {ratio:.2f}x the requests/s of the same web stack "
        f"answering a fixed body. CPU per request at saturation (median): gunicorn "
        f"{median(saturated, 'cpu_server_ms'):.2f} ms, PostgreSQL "
        f"{median(saturated, 'cpu_database_ms'):.2f} ms, wrk "
        f"{median(saturated, 'cpu_client_ms'):.2f} ms; the ceiling's gunicorn "
        f"{median(ceilings, 'cpu_server_ms'):.2f} ms, wrk {median(ceilings, 'cpu_client_ms'):.2f} "
        f"ms. The open-loop client itself used {median(fixed, 'client_cpu'):.0%} of a core at "
        f"{args.rate}/s.\n\n"
        f"gunicorn (`lookalike serve`) with {args.web_workers} {arrangement}, access log "
        f"{'on' if args.access_log else 'off'}; the "
        f"load generators, PostgreSQL and gunicorn all on the same 2-core machine; "
        f"{args.repeats} runs of {args.seconds} s per HTTP row, interleaved, after a warm-up. "
        f"Command: `python bench/perf/read_path.py --database-url URL --rate {args.rate} "
        f"--seconds {args.seconds} --repeats {args.repeats} --web-workers {args.web_workers} "
        f"--worker-class {args.worker_class}{threads_option}"
        f"{'' if args.access_log else ' --no-access-log'}`.",
    )


if __name__ == "__main__":
    main()
