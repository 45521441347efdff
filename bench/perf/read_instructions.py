"""Instructions per request of GET /api/products/<id>/similar in the web process, counted by
valgrind's callgrind, beside the same Flask answering a fixed body (bench/perf/fixed_body_app.py).

Timings on a shared 2-core machine move by 20% from run to run; instruction counts do not,
so this is the figure to compare two versions of the read path by. Requests go straight to
the WSGI app (no gunicorn, no network; the database's own work is in another process and not
counted). Each app runs twice under callgrind, with N and 6N requests after the same warm-up,
and the difference is divided by 5N, so start-up and imports cancel out.

    python bench/perf/read_instructions.py --database-url URL [--requests 100]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ROOT, listed_ids, record

WARMUP = 50


def _serve(kind: str, count: int, database_url: str, body: str) -> None:
    """Child: answer ``count`` requests for random products after the warm-up."""
    from typing import Any

    from werkzeug.test import EnvironBuilder

    app: Any
    if kind == "ceiling":
        os.environ["LOOKALIKE_BENCH_BODY"] = body
        from bench.perf.fixed_body_app import app
    else:
        from web import create_app

        app = create_app({"database_url": database_url})
    ids = Path(body).with_suffix(".ids").read_text().split("\n")
    pick = random.Random(0).choice
    environs = [
        EnvironBuilder(path=f"/api/products/{pick(ids)}/similar").get_environ()
        for _ in range(WARMUP + count)
    ]

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        assert status.startswith("200"), status

    for environ in environs:
        b"".join(app(environ, start_response))


def _instructions(kind: str, count: int, database_url: str, body: Path) -> int:
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    child = [__file__, "--child", kind, str(count), "--database-url", database_url]
    out = subprocess.run(
        [*valgrind, sys.executable, *child, "--body", str(body)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stderr
    return int(re.search(r"Collected : (\d+)", out)[1])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _serve(args.child[0], int(args.child[1]), args.database_url, args.body)
        return

    from web import create_app

    ids = listed_ids(args.database_url)
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    body = work / "body.json"
    body.with_suffix(".ids").write_text("\n".join(ids))
    response = (
        create_app({"database_url": args.database_url})
        .test_client()
        .get(f"/api/products/{ids[0]}/similar")
    )
    body.write_bytes(response.get_data())

    small, large = args.requests, 6 * args.requests
    per_request = {}
    for kind in ("lookalike", "ceiling"):
        counts = [_instructions(kind, n, args.database_url, body) for n in (small, large)]
        per_request[kind] = (counts[1] - counts[0]) / (large - small)
    table = "\n".join(
        [
            "| web process, one request | instructions | x the fixed body |",
            "|---|---|---|",
            f"| GET /api/products/<id>/similar | {per_request['lookalike'] / 1e6:.2f} M | "
            f"{per_request['lookalike'] / per_request['ceiling']:.2f} |",
            f"| same Flask, fixed body of {len(body.read_bytes()):,} bytes, no database | "
            f"{per_request['ceiling'] / 1e6:.2f} M | 1.00 |",
        ]
    )
    record(
        f"Read path, instructions per request ({len(ids):,} products)",
        table,
        f"valgrind callgrind, {small} and {large} requests after {WARMUP} of warm-up, straight "
        "into the WSGI app; gunicorn and PostgreSQL not counted. Command: `python "
        f"bench/perf/read_instructions.py --database-url URL --requests {args.requests}`.",
    )


if __name__ == "__main__":
    main()
