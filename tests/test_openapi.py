"""Issue 12, requirement 5: the OpenAPI 3 description served at ``/api/openapi.json`` is kept
true, and a property-based fuzz of every operation it describes answers no 5xx.

True means: it is a valid OpenAPI 3 document; it describes exactly the app's routes under
``/api/``, ``/images/`` and ``/healthz``; and real answers of a small catalogue (indexed with
the pixel encoder, on PostgreSQL, with a real Redis queue of the test's own) have a documented
status, media type and body. The fuzz (Schemathesis over the document, in-process through
WSGI) sends valid and invalid requests to every operation, writes included: they go to the
test's queue, where the jobs stay queued, and ``service_env`` removes them afterwards.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import TestResponse

from cli.in_process import InProcessQueue, index_catalogue
from core.catalogue import read_catalogue
from core.catalogue_queries import FILTER_FIELDS
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.jobs import JobStep, StepCall
from core.models import Product
from tests.conftest import SAMPLE_IDS, SHOES, TSHIRTS, in_process_context

DESCRIBED_PREFIXES = ("/api/", "/images/", "/healthz")
UNINDEXED = "lone"  # a product without a vector: its lookalikes answer 409


@dataclass
class Shop:
    """The app over an indexed sample catalogue, and what a test needs to reach into it."""

    app: Flask
    index_job_id: str
    photos: Path
    encoder: PixelEncoder
    settings: dict[str, Any]


@pytest.fixture
def shop(
    app: Flask, service_env: dict[str, str], sample_catalogue: Path, pixel_encoder: PixelEncoder
) -> Iterator[Shop]:
    """``app`` (PostgreSQL, the test's own Redis queue) over the sample catalogue, indexed in
    this process with the pixel encoder, plus one product that has no vector."""
    url = service_env["LOOKALIKE_DATABASE_URL"]
    engine = make_engine(url)
    context = in_process_context(pixel_encoder, block_size=64, batch_size=8, decode_workers=1)
    with make_sessionmaker(engine)() as session:
        jobs = list(index_catalogue(context, session, read_catalogue(sample_catalogue).items))
        photo = sample_catalogue / "images" / f"{SAMPLE_IDS[0]}.jpg"
        session.add(Product(id=UNINDEXED, meta={}, image_path=str(photo), content_hash="0" * 64))
        session.commit()
    engine.dispose()
    yield Shop(
        app,
        jobs[-1].id,
        sample_catalogue / "images",
        pixel_encoder,
        {"media_dir": Path(service_env["LOOKALIKE_MEDIA_DIR"])},
    )
    app.extensions["lookalike.read_engine"].dispose()


def described(app: Flask) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


# --- the document -----------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3(tmp_path: Path) -> None:
    from web import create_app

    app = create_app({"database_url": f"sqlite:///{tmp_path / 'doc.db'}"})
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "/"}]
    # Behind a path prefix, the server the document names carries it.
    behind = app.test_client().get("/api/openapi.json", base_url="http://shop/store")
    assert behind.get_json()["servers"] == [{"url": "/store"}]


def _app_operations(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(DESCRIBED_PREFIXES):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.add((method.lower(), path))
    return found


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    from web import create_app

    app = create_app({"database_url": f"sqlite:///{tmp_path / 'doc.db'}"})
    document = app.test_client().get("/api/openapi.json").get_json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    in_document = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }
    in_app = _app_operations(app)
    assert in_app - in_document == set(), "routes the document does not describe"
    assert in_document - in_app == set(), "operations the app does not have"
    assert len(in_app) == 10
    # The filters always taken are the ones core.catalogue_queries names.
    (filters,) = [
        p for p in document["paths"]["/api/products"]["get"]["parameters"] if p["name"] == "filters"
    ]
    assert set(filters["schema"]["properties"]) == set(FILTER_FIELDS)


# --- real answers -----------------------------------------------------------------------------


def conforms(schema: schemathesis.BaseSchema, path: str, response: TestResponse) -> None:
    """``response`` (to the request of ``path``'s operation) has a status the operation
    documents, one of the media types and every required header documented for it, and a
    body its schema allows."""
    method = response.request.method.upper()
    operation = schema[path][method]
    status = response.status_code
    definition = operation.definition.raw["responses"].get(str(status))
    assert definition is not None, f"{method} {path} answered an undocumented {status}"
    if "$ref" in definition:
        name = definition["$ref"].rsplit("/", 1)[-1]
        definition = schema.raw_schema["components"]["responses"][name]
    documented = list(definition.get("content", {}))
    main = (response.mimetype or "").partition("/")[0]
    assert response.mimetype in documented or f"{main}/*" in documented, (
        f"{method} {path} {status} answered {response.mimetype}, documented: {documented}"
    )
    for header, spec in definition.get("headers", {}).items():
        assert not spec.get("required") or header in response.headers, header
    operation.validate_response(response)  # raises when the body does not fit its schema


def _photo(shop: Shop, product_id: str) -> bytes:
    return (shop.photos / f"{product_id}.jpg").read_bytes()


def _upload(*files: tuple[bytes, str], **fields: list[str]) -> dict[str, Any]:
    return {"images": [(io.BytesIO(data), name) for data, name in files], **fields}


def test_real_answers_fit_the_document(shop: Shop) -> None:
    app, schema = shop.app, described(shop.app)
    client = app.test_client()

    def check(path: str, response: TestResponse, status: int) -> Any:
        assert response.status_code == status, response.get_data(as_text=True)
        conforms(schema, path, response)
        return response.get_json() if response.is_json else None

    check("/api/openapi.json", client.get("/api/openapi.json"), 200)
    assert check("/healthz", client.get("/healthz"), 200)["status"] == "ok"

    products = "/api/products"
    page = check(products, client.get(products), 200)
    assert page["total"] == len(SAMPLE_IDS) + 1
    page = check(products, client.get(products, query_string={"per_page": 2, "page": 2}), 200)
    assert len(page["items"]) == 2 and page["page"] == 2
    filtered = check(products, client.get(products, query_string={"gender": "Men"}), 200)
    assert filtered["items"] and all(p["gender"] == "Men" for p in filtered["items"])
    check(products, client.get(products, query_string={"page": "0"}), 400)
    check(products, client.get(products, query_string={"page": "\u00b2"}), 400)
    check(products, client.get(products, query_string={"nothing_has": "this"}), 400)

    product = "/api/products/{product_id}"
    assert check(product, client.get(f"/api/products/{TSHIRTS[0]}"), 200)["id"] == TSHIRTS[0]
    check(product, client.get("/api/products/nope"), 404)
    check(product, client.get("/api/products/ab%00cd"), 404)

    similar = "/api/products/{product_id}/similar"
    found = check(similar, client.get(f"/api/products/{TSHIRTS[0]}/similar"), 200)
    assert [n["rank"] for n in found["neighbours"]] == list(range(1, 11))
    check(similar, client.get(f"/api/products/{UNINDEXED}/similar"), 409)
    check(similar, client.get("/api/products/nope/similar"), 404)

    image = "/images/{product_id}"
    response = client.get(f"/images/{TSHIRTS[0]}")
    check(image, response, 200)
    assert response.mimetype == "image/jpeg" and response.data == _photo(shop, TSHIRTS[0])
    check(image, client.get("/images/nope"), 404)

    job = "/api/jobs/{job_id}"
    indexed = check(job, client.get(f"/api/jobs/{shop.index_job_id}"), 200)
    assert indexed["kind"] == "index" and indexed["state"] == "succeeded"
    assert indexed["result"]["lists_written"] > 0
    check(job, client.get("/api/jobs/00000000-0000-0000-0000-000000000000"), 404)
    check(job, client.get("/api/jobs/%00"), 404)

    # Writes: recorded and queued (the test's queue has no worker; jobs stay queued).
    added = check(
        products,
        client.post(
            products,
            data=_upload(
                (_photo(shop, SHOES[0]), "a.jpg"),
                (b"not a photo", "b.jpg"),
                id=["new-1", "new-2"],
                metadata=['{"colour": "red"}', "{}"],
            ),
        ),
        202,
    )
    assert added["product_ids"] == ["new-1"] and len(added["rejected"]) == 1
    queued = check(job, client.get(added["status_url"]), 200)
    assert queued["state"] == "queued" and queued["kind"] == "add_products"
    refused = check(products, client.post(products, data=_upload((b"", "x.jpg"))), 400)
    assert refused["error"]["code"] == "invalid_upload" and refused["error"]["rejected"]
    bad_meta = _upload((_photo(shop, SHOES[1]), "c.jpg"), metadata=['{"id": "x"}'])
    check(products, client.post(products, data=bad_meta), 400)
    check(products, client.post(products, data={}), 400)
    cross_site = client.post(
        products,
        data=_upload((_photo(shop, SHOES[1]), "c.jpg")),
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    check(products, cross_site, 403)

    search = "/api/search"
    asked = check(
        search,
        client.post(search, data={"image": (io.BytesIO(_photo(shop, SHOES[2])), "q.jpg")}),
        202,
    )
    check(search, client.post(search, data={"image": (io.BytesIO(b"GIF89a"), "q.gif")}), 400)
    check(search, client.post(search, data={}), 400)
    # The search step, run here as a worker runs it: its result is documented too.
    context = in_process_context(shop.encoder, **shop.settings)
    queue = context.queue
    assert isinstance(queue, InProcessQueue)
    with app.extensions["lookalike.sessions"]() as session:
        queue.send(StepCall(JobStep.SEARCH, (asked["job_id"],)))
        for _ in queue.run(context, session):
            pass
    searched = check(job, client.get(asked["status_url"]), 200)
    assert searched["state"] == "succeeded"
    assert searched["result"]["neighbours"][0]["id"] == SHOES[2]

    delete = "/api/products/{product_id}"
    check(delete, client.delete(f"/api/products/{SHOES[3]}"), 202)
    check(delete, client.delete("/api/products/nope"), 404)


def test_guarded_and_unavailable_answers_fit_the_document(
    shop: Shop, service_env: dict[str, str]
) -> None:
    from web import create_app

    schema = described(shop.app)
    config = {
        "database_url": service_env["LOOKALIKE_DATABASE_URL"],
        "queue": service_env["LOOKALIKE_QUEUE"],
        "media_dir": service_env["LOOKALIKE_MEDIA_DIR"],
        "broker_url": service_env["LOOKALIKE_BROKER_URL"],
    }
    guarded = create_app({**config, "api_token": "secret", "max_request_bytes": 2000})
    down = create_app({**config, "broker_url": "redis://127.0.0.1:1/0"})
    try:
        client = guarded.test_client()
        photo = _photo(shop, TSHIRTS[1])
        forms: dict[str, Callable[[], dict[str, Any]]] = {
            "/api/products": lambda: _upload((photo, "a.jpg")),
            "/api/search": lambda: {"image": (io.BytesIO(photo), "q.jpg")},
        }
        for path, form in forms.items():
            response = client.post(path, data=form())
            assert response.status_code == 401
            conforms(schema, path, response)
            response = client.post(path, data=form(), headers={"Authorization": "Bearer secret"})
            assert response.status_code == 413
            conforms(schema, path, response)
        response = client.delete(f"/api/products/{TSHIRTS[1]}")
        assert response.status_code == 401
        conforms(schema, "/api/products/{product_id}", response)

        client = down.test_client()
        response = client.get("/healthz")
        assert response.status_code == 503 and response.get_json()["broker"].startswith("error")
        conforms(schema, "/healthz", response)
        response = client.post("/api/search", data={"image": (io.BytesIO(photo), "q.jpg")})
        assert response.status_code == 503
        conforms(schema, "/api/search", response)
    finally:
        for each in (guarded, down):
            each.extensions["lookalike.engine"].dispose()
            each.extensions["lookalike.read_engine"].dispose()


# --- the fuzz ---------------------------------------------------------------------------------

EXAMPLES_PER_MODE = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_fuzzing_every_operation_answers_no_5xx(shop: Shop) -> None:
    """Valid and invalid requests generated from the document for every operation and
    parameter: none answers 5xx, and every answer is one the document describes."""
    schema = described(shop.app)
    sent: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"an operation Schemathesis cannot read: {result.err()}")
            continue
        operation = result.ok()
        raw = operation.definition.raw
        # Invalid requests need something to break: a path parameter is any text already.
        breakable = "requestBody" in raw or any(
            p["in"] == "query" for p in raw.get("parameters", [])
        )
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if breakable else [])
        for mode in modes:

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                response = case.call()
                label = case.operation.label
                sent[label] = sent.get(label, 0) + 1
                case.validate_response(response, checks=CHECKS)

            try:
                fuzz()
            except Exception as exc:  # each operation's first failure, all reported at once
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(f"fuzzed {sum(sent.values())} requests over {len(sent)} operations: {sent}")
    assert not failures, "\n\n".join(failures)
    # Every operation but the one that serves the document, which Schemathesis leaves out
    # (it takes no input; test_real_answers_fit_the_document reads it), and /healthz, which
    # takes none either and so is asked once.
    fuzzed = {f"{method.upper()} {path}" for method, path in _app_operations(shop.app)}
    assert set(sent) == fuzzed - {"GET /api/openapi.json"}, sent
    assert all(n >= EXAMPLES_PER_MODE for label, n in sent.items() if label != "GET /healthz")
