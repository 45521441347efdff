"""Reads while slow clients trickle request bodies: GET /api/products/<id>/similar at a fixed
rate, open loop, with and without --slow connections each sending a POST /api/products body a
byte a second, for each serving arrangement side by side in one run:

- `lookalike serve` as it ships: gevent workers (a greenlet per connection);
- the arrangement before issue 12: gthread workers of --threads threads, alone;
- that same gthread server behind deploy/nginx.conf, docker-compose's front (needs nginx).

Every request is timed from when it was due and given --timeout seconds; one without a whole
response by then counts as a timeout, at that latency. The rows run --repeats times,
interleaved. Needs a PostgreSQL database with a catalogue indexed (--database-url), as
bench/perf/read_path.py does, which measures the read-path targets without slow clients.

    python bench/perf/slow_clients.py --database-url URL [--slow 50] [--rate 500]
        [--seconds 15] [--repeats 3] [--web-workers 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ROOT, free_port, listed_ids, lookalike_env, record, start_web
from bench.perf.open_loop import OpenLoopResult, open_loop
from bench.perf.read_path import wait_ready

NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"


class Trickle:
    """``count`` connections, each sending a POST /api/products a byte every ``interval``
    seconds after its headers, until stopped: what a phone on a bad line, or an attacker,
    looks like to a server."""

    def __init__(self, port: int, count: int, interval: float = 1.0, body: int = 100_000) -> None:
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        head = (
            f"POST /api/products HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=trickle\r\n"
            f"Content-Length: {body}\r\n\r\n--trickle\r\n"
        ).encode()
        for _ in range(count):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(head)
            self.sockets.append(connection)
        self.thread = threading.Thread(target=self._drip, args=(interval,), daemon=True)
        self.thread.start()
        time.sleep(1)  # the server has read every head and waits for the bodies

    def _drip(self, interval: float) -> None:
        while not self.stopped.wait(interval):
            for connection in self.sockets:
                with contextlib.suppress(OSError):
                    connection.send(b"x")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for connection in self.sockets:
            connection.close()


def nginx_config(folder: Path, listen: int, upstream: int) -> Path:
    """deploy/nginx.conf as docker-compose.yml mounts it, listening on loopback ``listen`` and
    passing to ``upstream`` on loopback in place of the compose network's addresses."""
    text = NGINX_CONFIG.read_text()
    text, listens = re.subn(r"listen 8000;", f"listen 127.0.0.1:{listen};", text)
    text, servers = re.subn(r"server web:8000;", f"server 127.0.0.1:{upstream};", text)
    if listens != 1 or servers != 1:
        raise ValueError(f"{NGINX_CONFIG} no longer has one 'listen 8000;' and 'server web:8000;'")
    config = folder / "nginx.conf"
    config.write_text(text)
    return config


def nginx_command(folder: Path, listen: int, upstream: int) -> list[str]:
    """nginx in the foreground on ``nginx_config``, its temporary files under ``folder``."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = folder / "nginx"
    prefix.mkdir(exist_ok=True)
    config = nginx_config(folder, listen, upstream)
    return [nginx, "-p", str(prefix), "-c", str(config), "-e", "stderr", "-g",
            f"daemon off; pid {prefix / 'nginx.pid'};"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--slow", type=int, default=50, help="trickling connections")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="gthread threads per process")
    args = parser.parse_args()

    ids = listed_ids(args.database_url)
    env = lookalike_env(LOOKALIKE_DATABASE_URL=args.database_url)
    work = Path(tempfile.mkdtemp(prefix="lookalike-slow-"))

    servers: list[subprocess.Popen[bytes]] = []
    arrangements: dict[str, int] = {}  # name -> port
    try:
        gevent, base = start_web(env, args.web_workers, access_log=False)
        servers.append(gevent)
        arrangements[f"`lookalike serve`: {args.web_workers} gevent processes"] = int(
            base.rsplit(":", 1)[1]
        )
        gthread, base = start_web(
            env, args.web_workers, args.threads, access_log=False, worker_class="gthread"
        )
        servers.append(gthread)
        gthread_port = int(base.rsplit(":", 1)[1])
        gthread_name = f"{args.web_workers} gthread processes x {args.threads} threads"
        arrangements[f"{gthread_name}, alone (before)"] = gthread_port
        if Path(shutil.which("nginx") or "/usr/sbin/nginx").exists():
            port = free_port()
            nginx = subprocess.Popen(
                nginx_command(work, port, gthread_port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            servers.append(nginx)
            arrangements[f"{gthread_name} behind deploy/nginx.conf"] = port
        else:
            print("nginx not found: the nginx row is left out", file=sys.stderr)
        for port in arrangements.values():
            wait_ready(f"http://127.0.0.1:{port}/api/products/{ids[0]}/similar")
            # Warm-up, not counted: every process opens its database connections.
            open_loop(f"http://127.0.0.1:{port}/api/products/{{id}}/similar", ids, args.rate, 3)

        results: dict[tuple[str, bool], list[OpenLoopResult]] = {}
        for repeat in range(args.repeats):
            for name, port in arrangements.items():
                for slow in (False, True):
                    print(f"run {repeat + 1}: {name}, slow clients: {slow}", flush=True)
                    trickle = Trickle(port, args.slow) if slow else None
                    try:
                        result = open_loop(
                            f"http://127.0.0.1:{port}/api/products/{{id}}/similar",
                            ids,
                            args.rate,
                            args.seconds,
                            timeout=args.timeout,
                        )
                    finally:
                        if trickle is not None:
                            trickle.stop()
                    results.setdefault((name, slow), []).append(result)
                    time.sleep(1)
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    def each(runs: list[OpenLoopResult], value: Callable[[OpenLoopResult], float]) -> str:
        values = [value(run) for run in runs]
        return f"{statistics.median(values):,.1f} ({', '.join(f'{v:,.1f}' for v in values)})"

    lines = [
        f"| arrangement | {args.slow} slow clients | served/s | p50 ms | p99 ms: median (each run) "
        "| p99.9 ms | timeouts | target: p99 < 50 ms | met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in arrangements:
        for slow in (False, True):
            runs = results[(name, slow)]
            worst = max(run.percentile(0.99) for run in runs)
            met = "" if not slow else ("yes" if worst < 50 and all(
                run.timeouts == 0 for run in runs) else "NO")  # fmt: skip
            lines.append(
                f"| {name} | {'trickling' if slow else 'none'} "
                f"| {each(runs, lambda r: r.served)} "
                f"| {each(runs, lambda r: r.percentile(0.5))} "
                f"| {each(runs, lambda r: r.percentile(0.99))} "
                f"| {each(runs, lambda r: r.percentile(0.999))} "
                f"| {sum(r.timeouts for r in runs)} of {sum(len(r.latencies_ms) for r in runs)} "
                f"| {'every run' if slow else ''} | {met} |"
            )
    record(
        f"Reads while {args.slow} clients trickle request bodies, {len(ids):,} products",
        "\n".join(lines),
        f"GET /api/products/<id>/similar for random ids at {args.rate}/s offered, open loop "
        f"(bench/perf/open_loop.py, 64 connections), {args.seconds} s per run, {args.repeats} "
        f"runs of every row, interleaved; a request with no response {args.timeout:g} s after "
        f"it was due counts as a timeout at that latency. Slow clients: {args.slow} "
        "connections, each sending a POST /api/products head and then one body byte a second "
        "(Content-Length 100,000). Access logs off; PostgreSQL, the servers and the load on "
        "the same machine. Command: `python bench/perf/slow_clients.py --database-url URL "
        f"--slow {args.slow} --rate {args.rate} --seconds {args.seconds} --repeats "
        f"{args.repeats} --web-workers {args.web_workers} --threads {args.threads}`.",
    )


if __name__ == "__main__":
    main()
