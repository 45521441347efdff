"""Operators' view: Prometheus metrics of the web app (GET /metrics) and of the workers
(`lookalike worker --metrics-port`), named by Prometheus conventions."""

from __future__ import annotations

import io
import time
from pathlib import Path

import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port
from tests.conftest import SAMPLE_IDS, Workers
from tests.test_service import wait_job


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(v for (n, found), v in samples.items() if n == name and set(wanted) <= set(found))


def test_web_metrics_by_route_and_status_and_the_catalogue_state(client: FlaskClient) -> None:
    for _ in range(3):
        assert client.get("/api/products").status_code == 200
    assert client.get("/api/products/nope").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = _samples(response.get_data(as_text=True))
    route = {"route": "/api/products", "method": "GET"}
    assert _value(samples, "lookalike_http_responses_total", status="200", **route) >= 3
    assert _value(samples, "lookalike_http_request_duration_seconds_count", **route) >= 3
    assert (
        _value(
            samples,
            "lookalike_http_responses_total",
            route="/api/products/<product_id>",
            status="404",
        )
        >= 1
    )
    assert _value(samples, "lookalike_http_responses_total", route="unmatched", status="404") >= 1
    assert ("lookalike_products", ()) in samples
    assert any(name == "lookalike_queue_messages" for name, _ in samples)


def test_a_method_clients_make_up_shares_one_series(client: FlaskClient) -> None:
    """Series (and the process's cache of them) cannot grow with what clients send."""
    for made_up in ("BREW", "WHEN", "FROBNICATE"):
        assert client.open("/api/products", method=made_up).status_code == 405
    samples = _samples(client.get("/metrics").get_data(as_text=True))
    methods = {dict(labels).get("method") for name, labels in samples if "http" in name}
    assert "other" in methods and not {"BREW", "WHEN", "FROBNICATE"} & methods


def test_worker_metrics_count_photos_and_steps(
    client: FlaskClient, workers: Workers, fashion_dev: Path
) -> None:
    port = free_port()
    workers.start(1, args=("--metrics-port", str(port)))
    photos = [(fashion_dev / "images" / f"{pid}.jpg").read_bytes() for pid in SAMPLE_IDS[:3]]
    response = client.post(
        "/api/products",
        content_type="multipart/form-data",
        data={"images": [(io.BytesIO(p), f"m{n}.jpg") for n, p in enumerate(photos)]},
    )
    assert response.status_code == 202
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    deadline = time.monotonic() + 10
    while True:
        samples = _samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        done = _value(samples, "lookalike_job_steps_total", step="add_products", outcome="done")
        if done >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done == 1
    assert _value(samples, "lookalike_photos_embedded_total") == 3
    assert _value(samples, "lookalike_embedding_seconds_count") >= 1
    assert _value(samples, "lookalike_job_step_seconds_count", step="add_products") == 1
    web = _samples(client.get("/metrics").get_data(as_text=True))
    assert _value(web, "lookalike_jobs", kind="add_products", state="succeeded") == 1


def test_requests_are_counted_as_observe_counts_them_and_written_within_a_second() -> None:
    """The web process counts requests itself and writes them to prometheus_client once a
    second (web.metrics._Tally): the buckets, sum and count come out as Histogram.observe
    would have made them, bucket edges included, without a scrape asking."""
    from prometheus_client import CollectorRegistry, Histogram

    from web import metrics as web_metrics

    durations = [0.0004, 0.001, 0.0011, 0.0025, 0.3, 0.3, 9.99, 10.0, 42.0]
    series = ("/test/tally", "GET", 200)
    for seconds in durations:
        web_metrics._TALLY.add(series, seconds)
    reference = Histogram(
        "reference_seconds",
        "",
        ["route", "method"],
        buckets=web_metrics._LATENCY_BUCKETS,
        registry=CollectorRegistry(),
    )
    for seconds in durations:
        reference.labels("/test/tally", "GET").observe(seconds)

    def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
        return {
            (sample.name.rsplit("_", 1)[-1], sample.labels.get("le", "")): sample.value
            for family in histogram.collect()
            for sample in family.samples
            if sample.labels.get("route") == "/test/tally" and not sample.name.endswith("created")
        }

    latency, responses = web_metrics._http()
    time.sleep(1.5)  # no scrape: the process's own thread writes them
    assert samples(latency) == samples(reference)
    counted = responses.labels("/test/tally", "GET", "200")._value.get()
    assert counted == len(durations)
