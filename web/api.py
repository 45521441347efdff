"""JSON API: views parse the request, call one ``core`` function, and shape the response; the
service functions (``core.submissions``) record jobs and hand them to the queue."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, jsonify, request, send_file, url_for
from sqlalchemy import text
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound

from core import partition
from core.catalogue_queries import MAX_QUERY, browse_products, check_filters
from core.context import Context
from core.errors import (
    CrossSiteRequest,
    InvalidImage,
    InvalidRequest,
    ProductNotFound,
    Unauthorized,
)
from core.jobs import get_job, job_errors, state_of
from core.lookalikes import ProductSummary
from core.metadata import parse_metadata
from core.models import ImageError, Job, Product
from core.settings import Settings
from core.submissions import submit_add_products, submit_delete, submit_search
from core.thumbnails import MEDIA_TYPE, check_width, thumbnail
from core.uploads import MetadataSheet, Upload
from web.headers import stored_image_type
from web.openapi import openapi_document

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)
_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


def settings() -> Settings:
    return current_app.config["LOOKALIKE"]  # type: ignore[no-any-return]


def context() -> Context:
    return current_app.extensions["lookalike.context"]  # type: ignore[no-any-return]


def db() -> Session:
    if "db_session" not in g:
        g.db_session = current_app.extensions["lookalike.sessions"]()
    return g.db_session  # type: ignore[no-any-return]


WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


@bp.before_request
def require_token() -> None:
    """Writes need the API token when one is set; without one, they must at least not come
    from another site's page in a browser (a cross-site form or fetch could otherwise delete
    the catalogue)."""
    if request.method not in WRITE_METHODS:
        return
    token = settings().api_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
    elif not same_origin():
        raise CrossSiteRequest(
            "writes are refused from other sites' pages; set LOOKALIKE_API_TOKEN to let "
            "other origins write with 'Authorization: Bearer <token>'"
        )


def same_origin() -> bool:
    """Whether a request comes from this service's own pages, or from no page at all (curl,
    scripts: they send neither header). Browsers say where a request comes from in
    ``Sec-Fetch-Site``; older ones only in ``Origin``, compared with the address asked for."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def accepted(job: Job, **extra: Any) -> Any:
    # The line that ties a request (its id, core.logs) to the job it queued.
    log.info("queued %s job %s (%d)", job.kind, job.id, job.total, extra={"job_id": job.id})
    body = {"job_id": job.id, "status_url": url_for("api.job_status", job_id=job.id), **extra}
    return jsonify(body), 202, {"Location": body["status_url"]}


def image_urls() -> Callable[[str], str]:
    """``url_for("api.product_image", product_id=...)`` for the many products of a response:
    the address up to the id is built once per path prefix the app is served under, then
    each id is quoted by the route's own converter."""
    known: dict[str, tuple[str, Any]] = current_app.extensions.setdefault(
        "lookalike.image_url_prefixes", {}
    )
    found = known.get(request.script_root)
    if found is None:
        prefix = url_for("api.product_image", product_id="-").removesuffix("-")
        converter = current_app.url_map.converters["default"](current_app.url_map)
        found = known[request.script_root] = (prefix, converter)
    prefix, converter = found
    return lambda product_id: prefix + converter.to_url(product_id)


def product_json(
    product: Product | ProductSummary, image_url: Callable[[str], str] | None = None
) -> dict[str, Any]:
    # The service's fields last, so that no metadata key can stand in for them (keys are
    # written sorted, so the order here does not show in the response).
    return {
        **(product.meta or {}),
        "id": product.id,
        "image_url": (image_url or image_urls())(product.id),
    }


def _form_list(name: str, count: int) -> list[str | None]:
    values = request.form.getlist(name)
    if not values:
        return [None] * count
    if len(values) != count:
        raise InvalidRequest(f"{len(values)} '{name}' fields for {count} images: give one each")
    return [value or None for value in values]


def _metadata(raw: str | None) -> dict[str, Any] | None:
    return None if raw is None else parse_metadata(raw)


@bp.post("/api/products")
def add_products() -> Any:
    files = request.files.getlist("images")
    if not files:
        raise InvalidRequest("no files: send them as multipart field 'images'")
    ids = _form_list("id", len(files))
    metas = [_metadata(raw) for raw in _form_list("metadata", len(files))]
    uploads = [
        Upload(file.filename or f"image-{n}", file.read(), pid, meta)
        for n, (file, pid, meta) in enumerate(zip(files, ids, metas, strict=True))
    ]
    sheet_file = request.files.get("metadata_csv")
    sheet = None
    if sheet_file is not None and sheet_file.filename:  # an empty file field sends no name
        sheet = MetadataSheet.parse(sheet_file.read(), sheet_file.filename or "metadata.csv")
    job, result = submit_add_products(context(), db(), uploads, sheet)
    return accepted(
        job,
        product_ids=result.product_ids,
        rejected=[r.as_dict() for r in result.rejected],
    )


@bp.post("/api/search")
def search() -> Any:
    file = request.files.get("image")
    if file is None:
        raise InvalidRequest("no file: send it as multipart field 'image'")
    return accepted(submit_search(context(), db(), file.read(), file.filename))


def job_json(job: Job, errors: list[ImageError]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "state": state_of(job).shown.value,
        "progress": {"done": job.done, "total": job.total},
        "errors": [
            {"product_id": e.product_id or None, "file": e.path, "message": e.message}
            for e in errors
        ],
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if job.result is not None:
        body["result"] = job.result
    return body


@bp.get("/api/jobs/<job_id>")
def job_status(job_id: str) -> Any:
    session = db()
    return jsonify(job_json(get_job(session, job_id), job_errors(session, job_id)))


@bp.get("/api/products/<product_id>/similar")
def similar(product_id: str) -> Any:
    # Kept per process for at most LOOKALIKE_READ_CACHE_SECONDS after a write (core.read_cache);
    # keyed by the prefix the app is served under too, as the image addresses hold it.
    body = current_app.extensions["lookalike.read_cache"].get(
        (request.script_root, product_id), lambda: _similar_body(product_id)
    )
    return current_app.response_class(body, mimetype="application/json")


def _similar_body(product_id: str) -> bytes:
    found = current_app.extensions["lookalike.lookalikes"](product_id)
    image_url = image_urls()
    body: dict[str, Any] = {
        "product": product_json(found.product, image_url),
        "neighbours": [
            {**product_json(n.product, image_url), "rank": n.rank, "score": round(n.score, 6)}
            for n in found.neighbours
        ],
    }
    if found.same_photo:  # only then: every other answer stays as it was
        body["same_photo_as"] = [product_json(twin, image_url) for twin in found.same_photo]
    if found.partition:  # likewise: only lists built within a group say so
        body["grouping"] = partition.described(found.partition, found.product.meta)
    return jsonify(body).get_data()


def _positive_int(name: str, default: int, most: int) -> int:
    raw = request.args.get(name, str(default))
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not _WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"{name} must be a whole number from 1 to {most}")
    return int(raw)


@bp.get("/api/products")
def list_products() -> Any:
    page = _positive_int("page", 1, 10**9)
    per_page = _positive_int("per_page", 50, 500)
    filters = {k: v for k, v in request.args.items() if k not in ("page", "per_page", "q")}
    check_filters(db(), filters)
    query = request.args.get("q", "")
    if len(query) > MAX_QUERY or "\x00" in query:
        raise InvalidRequest(f"q must be at most {MAX_QUERY} characters, without NUL")
    found = browse_products(db(), filters, page, per_page, query)
    image_url = image_urls()
    return jsonify(
        {
            "items": [product_json(p, image_url) for p in found.items],
            "page": found.page,
            "per_page": found.per_page,
            "total": found.total,
        }
    )


def _product(product_id: str) -> Product:
    product = db().get(Product, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product


@bp.get("/api/products/<product_id>")
def get_product(product_id: str) -> Any:
    return jsonify(product_json(_product(product_id)))


@bp.delete("/api/products/<product_id>")
def delete_product(product_id: str) -> Any:
    return accepted(submit_delete(context(), db(), product_id))


@bp.get("/images/<product_id>")
def product_image(product_id: str) -> Any:
    """The stored photo, or with ``w`` a WebP thumbnail that wide (``core.thumbnails``). With
    ``v``, the start of the photo's content hash as the pages give it, the address names one
    photo for good, so it may be cached for a year; without, for an hour."""
    product = _product(product_id)
    version = request.args.get("v", "")
    pinned = bool(version) and product.content_hash.startswith(version)
    max_age = YEAR if pinned else 3600
    raw_width = request.args.get("w")
    if raw_width is None:
        mimetype = stored_image_type(product.image_path)
        return send_file(product.image_path, mimetype=mimetype, max_age=max_age)
    width = check_width(int(raw_width) if _WHOLE_NUMBER.fullmatch(raw_width) else -1)
    s = settings()
    try:
        path = thumbnail(
            s.media_dir, product.image_path, product.content_hash, width, s.max_image_pixels
        )
    except InvalidImage:
        raise NotFound("this product's stored photo can no longer be read") from None
    response = send_file(
        path, mimetype=MEDIA_TYPE, max_age=max_age, etag=f"{product.content_hash[:16]}-{width}"
    )
    if pinned:
        response.cache_control.immutable = True
    return response


YEAR = 365 * 24 * 3600


@bp.get("/api/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document(request.script_root))


@bp.get("/healthz")
def healthz() -> Any:
    checks: dict[str, str] = {}
    try:
        db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means unhealthy; say which
        checks["database"] = f"error: {exc}"
    try:
        with current_app.extensions["celery"].connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ok" if healthy else "unavailable", **checks}), (
        200 if healthy else 503
    )
