"""Logs a machine can read (core.logs): JSON lines with the job and the request they belong to."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from core import logs
from tests.conftest import SAMPLE_IDS
from tests.test_cli import _lookalike


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the process logs meanwhile, as LOOKALIKE_LOG_FORMAT=json writes it."""
    stream = io.StringIO()
    handler = logs.handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_request_and_the_job_it_queues_share_a_line(
    client: FlaskClient, json_lines: io.StringIO, fashion_dev: Path
) -> None:
    photo = (fashion_dev / "images" / f"{SAMPLE_IDS[0]}.jpg").read_bytes()
    response = client.post(
        "/api/products",
        content_type="multipart/form-data",
        data={"images": [(io.BytesIO(photo), "p1.jpg")]},
        headers={"X-Request-ID": "shop-7f3a"},
    )
    assert response.status_code == 202 and response.headers["X-Request-ID"] == "shop-7f3a"
    job_id = response.get_json()["job_id"]
    queued = [r for r in _records(json_lines) if str(r["message"]).startswith("queued")]
    assert len(queued) == 1, json_lines.getvalue()
    line = queued[0]
    assert (line["request_id"], line["job_id"], line["level"]) == ("shop-7f3a", job_id, "INFO")
    assert {"time", "logger", "message"} <= set(line)

    # No id, or one that is not a sane token: a fresh id, said back.
    fresh = client.get("/healthz", headers={"X-Request-ID": "not a token; it has spaces"})
    given = fresh.headers["X-Request-ID"]
    assert len(given) == 32 and given != client.get("/healthz").headers["X-Request-ID"]


def test_index_logs_json_lines_with_the_job(sample_catalogue: Path, tmp_path: Path) -> None:
    indexed = _lookalike(tmp_path, "index", str(sample_catalogue), LOOKALIKE_LOG_FORMAT="json")
    assert indexed.returncode == 0, indexed.stderr
    records = [json.loads(line) for line in indexed.stderr.splitlines()]
    done = [r for r in records if str(r["message"]).startswith("index done")]
    assert len(done) == 1 and isinstance(done[0]["job_id"], str)
    progress = [r for r in records if r["logger"] == "lookalike.progress"]
    # The photos, then the neighbour build's one block.
    assert progress and progress[-1]["message"] == (
        f"indexing {len(SAMPLE_IDS) + 1}/{len(SAMPLE_IDS) + 1} (100%)"
    )
    assert all(r["job_id"] == done[0]["job_id"] for r in records if "job_id" in r)
