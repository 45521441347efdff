"""The ceiling of the web stack on this machine: the same Flask under the same gunicorn, at the
same address, answering a fixed body with no database. bench/perf/read_path.py serves it beside
Lookalike and loads both alike, so the ratio between them is what the read itself costs.

    LOOKALIKE_BENCH_BODY=FILE gunicorn -k gevent bench.perf.fixed_body_app:app
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response

app = Flask(__name__)
BODY = Path(os.environ["LOOKALIKE_BENCH_BODY"]).read_bytes()


@app.get("/api/products/<product_id>/similar")
def similar(product_id: str) -> Response:
    return Response(BODY, mimetype="application/json")
