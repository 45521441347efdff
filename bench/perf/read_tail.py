"""Where the read path's time goes: one request's CPU, and what the slowest requests were doing
(issue 15, requirement 2). Needs the database bench/perf/read_path.py reads (--database-url).

- **Profile.** wrk saturates `lookalike serve` (3 gevent processes, as served) and then the
  fixed-body ceiling (bench/perf/fixed_body_app.py under the same gunicorn) while py-spy samples
  every worker process without stopping it. Each sample goes to what the request was doing: the
  deepest frame of Lookalike's own code (the read cache, the metrics hooks, the request id, the
  security headers, the view, the database read), else the deepest of gunicorn, gevent, Flask /
  Werkzeug. Shares times the CPU per request of a run without py-spy give milliseconds per
  request, Lookalike beside the ceiling.
- **Tail.** The same gunicorn with bench/perf/trace_config.py, which records per request when
  the app was called and done, its CPU, the time its process was runnable but waiting for a core
  (schedstat), garbage collection and database time. The open-loop client (bench/perf/
  open_loop.py) sends --rate requests/s for --seconds, --repeats times, and records when each
  was due, sent and answered. Each of the slowest 1% of a run is split into: the client late
  (due to sent), before the app (sent to called: the process waiting for a core, busy with other
  requests, or the rest: kernel, gunicorn's parser, the event loop), in the app (garbage
  collection, waiting for a core, the read cache's check of the change counters, a list read
  on a miss, the rest) and after (the response's write and the
  client's read), and named by its largest part.

    python bench/perf/read_tail.py --database-url URL [--rate 500] [--seconds 15]
        [--repeats 5] [--profile-seconds 15]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ROOT, free_port, listed_ids, lookalike_env, record, start_web
from bench.perf.open_loop import open_loop
from bench.perf.read_path import WRK_SCRIPT, _start_ceiling, _wrk, wait_ready

# What a profile sample was doing: the deepest frame of Lookalike's own code decides, else the
# deepest frame of a library below. py-spy names files relative to sys.path ("web/api.py",
# "flask/app.py"), so the first component says whose a frame is.
APP_PARTS = {
    "web/metrics.py": "metrics hooks (prometheus_client)",
    "web/request_ids.py": "request id",
    "web/headers.py": "security headers",
    "core/read_cache.py": "read cache",
    "core/db.py": "database read",
    "core/lookalikes.py": "database read",
    "web/api.py": "view (response object)",
    "bench/perf/fixed_body_app.py": "view (response object)",
    "perf/fixed_body_app.py": "view (response object)",
    "fixed_body_app.py": "view (response object)",
}
APP_PACKAGES = ("web", "core", "worker", "cli")
LIBRARY_PARTS = {
    "flask": "Flask / Werkzeug dispatch",
    "werkzeug": "Flask / Werkzeug dispatch",
    "blinker": "Flask / Werkzeug dispatch",
    "gunicorn": "gunicorn (parse, write)",
    "gevent": "gevent loop and sockets",
}
_FRAME_FILE = re.compile(r"\(([^()]*?)(?::\d+)?\)$")

TAIL_PARTS = (
    "client late",
    "before the app: waiting for a core",
    "before the app: other requests of the process",
    "before the app: kernel, parser, loop",
    "in the app: garbage collection",
    "in the app: waiting for a core",
    "in the app: the counters' check",
    "in the app: a list read (a miss)",
    "in the app: the rest",
    "after: write and client read",
)


def part_of(stack: str) -> str:
    """The part of the request a py-spy raw stack (``frame;frame;...``, root first) was in."""
    files = []
    for frame in stack.split(";"):
        found = _FRAME_FILE.search(frame.strip())
        files.append(found[1] if found else "")
    for path in reversed(files):
        if path in APP_PARTS:
            return APP_PARTS[path]
        if path.split("/")[0] in APP_PACKAGES:
            return "other app code"
    for path in reversed(files):
        if path.split("/")[0] in LIBRARY_PARTS:
            return LIBRARY_PARTS[path.split("/")[0]]
    return "other (stdlib, interpreter)"


def profile_shares(raw: Path) -> dict[str, float]:
    """Share of the samples in each part, from py-spy's ``--format raw`` output."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[part_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.items()}


def _profiled_wrk(
    base: str, script: Path, server: int, seconds: int, out: Path
) -> dict[str, float]:
    """wrk at saturation while py-spy samples the gunicorn processes of ``server``."""
    beside = Path(sys.executable).parent / "py-spy"  # installed in the same environment
    spy = subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--pid",
            str(server),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "200",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # py-spy attaches before the load starts
    result = _wrk(base, script, 64, seconds - 2, server)
    spy.wait(timeout=120)
    return result


def profile(
    env: dict[str, str], work: Path, ids: list[str], seconds: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per part, CPU ms per request of Lookalike and of the ceiling; and each one's CPU per
    request at saturation without py-spy."""
    script = work / "random.lua"
    web, base = start_web(env, 3, access_log=False)
    ceiling = None
    try:
        body = work / "body.json"
        body.write_bytes(wait_ready(f"{base}/api/products/{ids[0]}/similar"))
        ceiling, ceiling_base = _start_ceiling(body, "gevent", 3, 2, False)
        wait_ready(f"{ceiling_base}/api/products/{ids[0]}/similar")
        cpu: dict[str, float] = {}
        parts: dict[str, dict[str, float]] = {}
        for name, process, url in (("lookalike", web, base), ("ceiling", ceiling, ceiling_base)):
            _wrk(url, script, 64, 5, process.pid)  # warm-up: every id read once
            cpu[name] = _wrk(url, script, 64, seconds, process.pid)["cpu_server_ms"]
            raw = work / f"profile-{name}.txt"
            _profiled_wrk(url, script, process.pid, seconds, raw)
            print(f"py-spy samples of {name}: {raw}")
            parts[name] = {k: v * cpu[name] for k, v in profile_shares(raw).items()}
        return parts, cpu
    finally:
        for server in (web, ceiling):
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


APP = "web:create_app()"


def start_traced(env: dict[str, str], trace_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`lookalike serve`'s gunicorn (same options) with the tracing config in place of its own."""
    from cli.main import gunicorn_options

    options = gunicorn_options("gevent", 3, 2, 1000, False)
    options[options.index("python:cli.gunicorn_config")] = "python:bench.perf.trace_config"
    port = free_port()
    metrics = tempfile.mkdtemp(prefix="lookalike-metrics-")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *options, "--bind", f"127.0.0.1:{port}", APP],
        cwd=ROOT,
        env={
            **env,
            "PYTHONPATH": str(ROOT),
            "LOOKALIKE_TRACE_DIR": str(trace_dir),
            "PROMETHEUS_MULTIPROC_DIR": metrics,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return server, f"http://127.0.0.1:{port}"


def split(
    client: tuple[int, float, float, float],
    mine: dict[str, Any],
    earlier: dict[str, Any] | None,
    others: Iterable[dict[str, Any]],
) -> dict[str, float]:
    """One request's milliseconds in each of ``TAIL_PARTS``."""
    _seq, due, sent, done = client
    before = max(0.0, mine["t0"] - sent)
    # The process's wait for a core since its previous request ended, at most the time before.
    core_before = min(before, mine["wait0"] - earlier["wait1"]) if earlier else 0.0
    busy = sum(
        max(0.0, min(o["t1"], mine["t0"]) - max(o["t0"], sent)) for o in others if o is not mine
    )
    busy = min(before - core_before, busy)
    app = mine["t1"] - mine["t0"]
    core_in = min(app, mine["wait1"] - mine["wait0"])
    gc_in = min(app - core_in, mine["gc"])
    check_in = min(app - core_in - gc_in, mine.get("check", 0.0))
    db_in = min(app - core_in - gc_in - check_in, mine["db"])
    ms = {
        "client late": sent - due,
        "before the app: waiting for a core": core_before,
        "before the app: other requests of the process": busy,
        "before the app: kernel, parser, loop": before - core_before - busy,
        "in the app: garbage collection": gc_in,
        "in the app: waiting for a core": core_in,
        "in the app: the counters' check": check_in,
        "in the app: a list read (a miss)": db_in,
        "in the app: the rest": app - core_in - gc_in - check_in - db_in,
        "after: write and client read": max(0.0, done - mine["t1"]),
    }
    return {k: 1000 * max(0.0, v) for k, v in ms.items()}


def server_records(trace_dir: Path) -> dict[str, dict[str, Any]]:
    """The traced server's records of the client's requests (ids ``q<n>``), by id."""
    found: dict[str, dict[str, Any]] = {}
    for path in trace_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["id"].startswith("q"):
                row["pid"] = path.stem
                found[row["id"]] = row
    return found


def traced_run(
    env: dict[str, str], trace_dir: Path, ids: list[str], rate: int, seconds: int
) -> dict[str, Any]:
    """One open-loop run against a fresh traced server; the workers write their records when
    they stop, and the run gets them."""
    for path in trace_dir.glob("*.jsonl"):
        path.unlink()
    server, base = start_traced(env, trace_dir)
    client: list[tuple[int, float, float, float]] = []
    try:
        template = base + "/api/products/{id}/similar"
        wait_ready(template.format(id=ids[0]))
        # Warm-up, not traced: every id read in every process, as a long-running server has
        # (the catalogue's lists all fit in the read cache). A connection per request, so that
        # each lands on any process: kept-alive ones are shared out unevenly, and the process
        # that drew few of them was left with ids unread (counted as misses in the runs).
        script = trace_dir.parent / "random.lua"
        subprocess.run(
            ["wrk", "-t2", "-c16", "-d20s", "-H", "Connection: close", "-s", str(script), base],
            capture_output=True,
            check=True,
        )
        open_loop(template, ids, rate, 3)
        result = open_loop(template, ids, rate, seconds, trace=client)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {
        "client": client,
        "records": server_records(trace_dir),
        "p99": result.percentile(0.99),
        "p999": result.percentile(0.999),
    }


def slow_parts(run: dict[str, Any]) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The parts of each of a run's slowest 1%, and of a sample of all its requests."""
    records: dict[str, dict[str, Any]] = run["records"]
    by_pid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in records.values():
        by_pid[row["pid"]].append(row)
    for rows in by_pid.values():
        rows.sort(key=lambda r: r["t1"])
    ends = {pid: [r["t1"] for r in rows] for pid, rows in by_pid.items()}

    def parts(request: tuple[int, float, float, float]) -> dict[str, float] | None:
        mine = records.get(f"q{request[0]}")
        if mine is None:
            return None
        rows = by_pid[mine["pid"]]
        # The process's last request to end before this one was called.
        at = bisect.bisect_left(ends[mine["pid"]], mine["t0"]) - 1
        earlier = rows[at] if at >= 0 else None
        return split(request, mine, earlier, rows[max(0, at - 64) : at + 65])

    client = run["client"]
    sample = client[:: max(1, len(client) // 2000)]
    return (
        [p for p in map(parts, slowest(run)) if p is not None],
        [p for p in map(parts, sample) if p is not None],
    )


def slowest(run: dict[str, Any]) -> list[tuple[int, float, float, float]]:
    """A run's slowest 1% as the client timed them (due to done)."""
    client = sorted(run["client"], key=lambda c: c[3] - c[1])
    return client[int(0.99 * len(client)) :]


def episodes(run: dict[str, Any]) -> int:
    """Stalls among a run's slowest 1%: slow requests due within 20 ms of the previous one
    count once."""
    dues = sorted(c[1] for c in slowest(run))
    return sum(1 for a, b in zip([-1.0, *dues], dues, strict=False) if b - a > 0.02)


def largest_part(parts: dict[str, float]) -> str:
    return max(parts, key=lambda k: parts[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-seconds", type=int, default=15, help="0: no profile")
    args = parser.parse_args()

    ids = listed_ids(args.database_url)
    env = lookalike_env(LOOKALIKE_DATABASE_URL=args.database_url)
    work = Path(tempfile.mkdtemp(prefix="lookalike-tail-"))

    (work / "random.lua").write_text(WRK_SCRIPT.format(ids=",".join(f'"{p}"' for p in ids)))
    parts: dict[str, dict[str, float]] = {"lookalike": {}, "ceiling": {}}
    cpu = {"lookalike": float("nan"), "ceiling": float("nan")}
    if args.profile_seconds > 0:
        parts, cpu = profile(env, work, ids, args.profile_seconds)

    trace_dir = work / "trace"
    trace_dir.mkdir()
    runs = [traced_run(env, trace_dir, ids, args.rate, args.seconds) for _ in range(args.repeats)]
    slow: list[dict[str, float]] = []
    every: list[dict[str, float]] = []
    per_run = []
    for run in runs:
        run_slow, run_all = slow_parts(run)
        slow += run_slow
        every += run_all
        per_run.append(
            {
                "p99": run["p99"],
                "p999": run["p999"],
                "largest": Counter(map(largest_part, run_slow)),
            }
        )
    full_gc = sum(
        run["records"].get(f"q{c[0]}", {}).get("gc_full", 0) > 0
        for run in runs
        for c in slowest(run)
    )
    summary = {
        "slow": len(slow),
        "largest": Counter(map(largest_part, slow)),
        "slow_median": {k: statistics.median(p[k] for p in slow) for k in TAIL_PARTS},
        "slow_mean": {k: statistics.fmean(p[k] for p in slow) for k in TAIL_PARTS},
        "all_median": {k: statistics.median(p[k] for p in every) for k in TAIL_PARTS},
        "full_gc": full_gc,
        "episodes": sum(map(episodes, runs)),
    }

    mine, theirs = parts["lookalike"], parts["ceiling"]
    names = sorted(set(parts["lookalike"]) | set(parts["ceiling"]))
    names.sort(key=lambda k: -parts["lookalike"].get(k, 0.0))
    profile_table = "\n".join(
        [
            "| part of the request | Lookalike, CPU ms per request | ceiling (fixed body) |",
            "|---|---|---|",
            *(f"| {k} | {mine.get(k, 0.0):.3f} | {theirs.get(k, 0.0):.3f} |" for k in names),
            f"| **total** (gunicorn CPU per request at saturation, no py-spy) "
            f"| {cpu['lookalike']:.3f} | {cpu['ceiling']:.3f} |",
        ]
    )
    largest = summary["largest"]
    tail_table = "\n".join(
        [
            "| part | median ms, all requests | median ms, slowest 1% | mean ms, slowest 1% "
            "| largest part of a slow request |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {summary['all_median'][k]:.3f} | {summary['slow_median'][k]:.3f} "
                f"| {summary['slow_mean'][k]:.3f} | {largest.get(k, 0)} of {summary['slow']} |"
                for k in TAIL_PARTS
            ),
        ]
    )
    run_lines = "; ".join(
        f"run {n + 1}: p99 {r['p99']:.2f} ms, p99.9 {r['p999']:.2f} ms, "
        + ", ".join(f"{k} {v}" for k, v in r["largest"].most_common(3))
        for n, r in enumerate(per_run)
    )
    record(
        f"Where the read path's time goes: one request and the tail, {len(ids):,} products",
        (profile_table + "\n\n" if args.profile_seconds > 0 else "") + tail_table,
        (
            f"Profile: py-spy at 200 Hz over every gunicorn worker at saturation (wrk, 64 "
            f"connections, {args.profile_seconds} s each), shares times the CPU per request of "
            "a run without py-spy; the script prints where the raw stacks are. "
            if args.profile_seconds > 0
            else "No profile in this run. "
        )
        + "Tail: "
        f"{args.repeats} open-loop runs of {args.seconds} s at {args.rate}/s; the slowest 1% "
        f"of each ({summary['slow']} requests in all) split as the script's docstring says. "
        f"{summary['full_gc']} of them had a full garbage collection inside the app; they "
        f"came in {summary['episodes']} episodes (slow requests due within 20 ms of each other "
        f"counted once). Per run: {run_lines}. Command: `python bench/perf/read_tail.py "
        f"--database-url URL --rate {args.rate} --seconds {args.seconds} --repeats "
        f"{args.repeats} --profile-seconds {args.profile_seconds}`.",
    )
    print(profile_table + "\n\n" + tail_table + "\n\n" + run_lines)


if __name__ == "__main__":
    main()
