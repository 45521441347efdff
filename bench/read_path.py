"""The read path under load: GET /api/products/<id>/similar against gunicorn, and the plain SQL
query from README against PostgreSQL, each at a fixed rate and at saturation.

Needs a PostgreSQL database with a catalogue indexed (--database-url; the 44k fashion-small
one from `bench/index_queue.py --keep-database`). HTTP load comes from wrk on loopback (a Lua
script picks a random product per request and, for the fixed rate, paces each connection);
SQL load from pgbench (--rate for the fixed rate), over a temporary table of the product ids.

    python bench/read_path.py --database-url URL [--rate 500] [--seconds 20] [--web-workers 3]
        [--web-threads 2] [--no-access-log]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import lookalike_env, record, start_web

README_QUERY = (
    "SELECT n.rank, n.neighbour_id, n.score, p.meta FROM neighbours n "
    "JOIN products p ON p.id = n.neighbour_id WHERE n.product_id = {id} ORDER BY n.rank;"
)
WRK_SCRIPT = """
local ids = {{{ids}}}
local pace = {pace}
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/products/" .. ids[math.random(#ids)] .. "/similar")
end
if pace > 0 then
  delay = function() return pace end
end
"""


def _wrk(base: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match[1]) * units[match[2]]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rate,
        "p50": latency("50%"),
        "p99": latency("99%"),
        "errors": float(errors[1]) if errors else 0.0,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--web-threads", type=int, default=2)
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    from sqlalchemy import create_engine, select, text

    from core.models import Neighbour

    engine = create_engine(args.database_url)
    with engine.begin() as connection:
        ids = sorted(connection.scalars(select(Neighbour.product_id).where(Neighbour.rank == 1)))
        connection.execute(text("DROP TABLE IF EXISTS bench_ids"))
        connection.execute(text("CREATE TABLE bench_ids (n integer PRIMARY KEY, id text)"))
        connection.execute(
            text("INSERT INTO bench_ids VALUES (:n, :id)"),
            [{"n": n, "id": pid} for n, pid in enumerate(ids)],
        )
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    results: dict[str, dict[str, float]] = {}

    # Plain SQL, through pgbench.
    sql = work / "query.sql"
    sql.write_text(
        f"\\set r random(0, {len(ids) - 1})\n"
        + README_QUERY.format(id="(SELECT id FROM bench_ids WHERE n = :r)")
    )
    results["sql fixed"] = _pgbench(args.database_url, sql, 8, args.seconds, args.rate, work)
    results["sql max"] = _pgbench(args.database_url, sql, 8, args.seconds, None, work)

    # HTTP, through gunicorn.
    env = lookalike_env(LOOKALIKE_DATABASE_URL=args.database_url)
    web, base = start_web(env, args.web_workers, args.web_threads, args.access_log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/api/products/{ids[0]}/similar", timeout=10).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        quoted = ",".join(f'"{pid}"' for pid in ids)
        connections = 50
        paced = work / "paced.lua"
        paced.write_text(WRK_SCRIPT.format(ids=quoted, pace=int(connections * 1000 / args.rate)))
        free = work / "free.lua"
        free.write_text(WRK_SCRIPT.format(ids=quoted, pace=0))
        results["http fixed"] = _wrk(base, paced, connections, args.seconds)
        results["http max"] = _wrk(base, free, 64, args.seconds)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS bench_ids"))
        engine.dispose()

    def row(name: str, key: str, target: str, met: bool | None) -> str:
        r = results[key]
        verdict = "" if met is None else ("yes" if met else "NO")
        return (
            f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | "
            f"{r['errors']:.0f} | {target} | {verdict} |"
        )

    http_fixed, http_max = results["http fixed"], results["http max"]
    table = "\n".join(
        [
            "| load | requests/s | p50 | p99 | errors | target | met? |",
            "|---|---|---|---|---|---|---|",
            row(
                f"GET /api/products/<id>/similar, {args.rate}/s offered",
                "http fixed",
                "p99 < 10 ms at 500/s",
                http_fixed["p99"] < 10 and args.rate >= 500,
            ),
            row(
                "GET /api/products/<id>/similar, saturation (64 connections)",
                "http max",
                ">= 1,500 requests/s",
                http_max["rps"] >= 1500,
            ),
            row(
                f"README's SQL query, {args.rate}/s offered (pgbench, 8 clients)",
                "sql fixed",
                "",
                None,
            ),
            row("README's SQL query, saturation (pgbench, 8 clients)", "sql max", "", None),
        ]
    )
    record(
        f"Read path on PostgreSQL, {len(ids):,} products with lists",
        table,
        f"gunicorn (`lookalike serve`) with {args.web_workers} gthread workers of "
        f"{args.web_threads} threads, access log {'on' if args.access_log else 'off'}; wrk "
        f"with 2 threads, PostgreSQL and gunicorn all on the same 2-core machine; "
        f"{args.seconds} s per row. Command: `python bench/read_path.py --database-url URL "
        f"--rate {args.rate} --seconds {args.seconds} --web-workers {args.web_workers} "
        f"--web-threads {args.web_threads}{'' if args.access_log else ' --no-access-log'}`.",
    )


if __name__ == "__main__":
    main()
