"""Open-loop HTTP load: requests sent on a fixed schedule, whatever the server does.

wrk (like any closed-loop client) waits for a response before it sends the next request on a
connection, so a slow server is sent less and its worst latencies are never measured
("coordinated omission"); wrk2 fixes that but is not packaged here. This client fires request
i at ``start + i / rate`` on the first idle kept-alive connection and times it from that
moment, so time spent waiting for a connection counts against the server.

    python bench/perf/open_loop.py URL_TEMPLATE --ids FILE [--rate 500] [--seconds 20]

``URL_TEMPLATE`` holds ``{id}``, replaced per request by an id drawn at random from ``--ids``
(one per line). Used by bench/perf/read_path.py; runnable on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class OpenLoopResult:
    offered: float  # requests/s the schedule asked for
    served: float  # responses/s over the run, counted to the last response
    latencies_ms: list[float]  # sorted, one per response, from its scheduled time
    errors: int  # non-2xx responses, failed connections and timeouts
    timeouts: int  # requests with no whole response within the timeout (counted at it)
    client_cpu_s: float  # this process's CPU (user + system) during the run

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        count = len(self.latencies_ms)
        return self.latencies_ms[min(count - 1, int(fraction * count))]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        """Send one request, read its whole response; returns the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


async def _run(
    url_template: str,
    ids: Sequence[str],
    rate: float,
    seconds: float,
    connections: int,
    timeout: float,
    trace: list[tuple[int, float, float, float]] | None,
) -> OpenLoopResult:
    scheme, _, authority, path = url_template.split("/", 3)
    parts = urlsplit(f"{scheme}//{authority}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path_template = "/" + path
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(_Connection(*await asyncio.open_connection(host, port)))

    latencies: list[float] = []
    errors = timeouts = 0
    last_done = 0.0
    pick = random.Random(0).choice

    async def one(seq: int, due: float, path: str) -> None:
        nonlocal errors, timeouts, last_done
        connection = await idle.get()
        sent = time.perf_counter()
        named = f"X-Request-ID: q{seq}\r\n" if trace is not None else ""
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{named}\r\n".encode()
        try:
            status = await asyncio.wait_for(
                connection.get(request), due + timeout - time.perf_counter()
            )
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
            errors += 1
            timeouts += isinstance(error, TimeoutError)
            connection.writer.close()
            connection = _Connection(*await asyncio.open_connection(host, port))
        else:
            if not 200 <= status < 300:
                errors += 1
        done = time.perf_counter()
        latencies.append((done - due) * 1000)
        if trace is not None:
            trace.append((seq, due, sent, done))
        last_done = max(last_done, done)
        idle.put_nowait(connection)

    total = int(rate * seconds)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due, path_template.replace("{id}", pick(ids)))))
    await asyncio.gather(*tasks)
    after = resource.getrusage(resource.RUSAGE_SELF)
    while not idle.empty():
        idle.get_nowait().writer.close()
    return OpenLoopResult(
        offered=rate,
        served=len(latencies) / (last_done - start),
        latencies_ms=sorted(latencies),
        errors=errors,
        timeouts=timeouts,
        client_cpu_s=(after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime),
    )


def open_loop(
    url_template: str,
    ids: Sequence[str],
    rate: float,
    seconds: float,
    connections: int = 64,
    timeout: float = 10.0,
    trace: list[tuple[int, float, float, float]] | None = None,
) -> OpenLoopResult:
    """``rate`` GETs per second for ``seconds``, each to ``url_template`` with a random id; a
    request with no whole response ``timeout`` seconds after it was due counts as an error.
    With ``trace``, each request says its number as ``X-Request-ID: q<n>`` and ``(n, due,
    sent, done)`` is appended to it (``time.perf_counter``: CLOCK_MONOTONIC, every process's
    clock on Linux)."""
    # The client's own collector off while it runs: a full collection of this process's heap
    # (what the caller keeps grows from run to run) would hold back every request due
    # meanwhile, and count against the server.
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_run(url_template, ids, rate, seconds, connections, timeout, trace))
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url_template")
    parser.add_argument("--ids", required=True, help="file of ids, one per line")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with open(args.ids) as handle:
        ids = [line.strip() for line in handle if line.strip()]
    result = open_loop(args.url_template, ids, args.rate, args.seconds, args.connections)
    print(
        f"offered {result.offered:,.0f}/s, served {result.served:,.0f}/s, "
        f"p50 {statistics.median(result.latencies_ms):.2f} ms, "
        f"p99 {result.percentile(0.99):.2f} ms, max {result.latencies_ms[-1]:.2f} ms, "
        f"errors {result.errors}, client CPU {result.client_cpu_s:.1f} s"
    )


if __name__ == "__main__":
    main()
