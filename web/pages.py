"""Server-rendered pages: catalogue, product, search by photo, add products, jobs.

Views parse the query string, call ``core``, and render a template. Reading pages (catalogue,
product, jobs) are complete HTML without JavaScript; the search and add pages post to the JSON
API from the browser and poll the job it returns.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, TypeVar

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from core import partition
from core.catalogue_queries import (
    FILTER_FIELDS,
    MAX_QUERY,
    browse_products,
    catalogue_filters,
    jobs_page,
    metadata_keys,
)
from core.jobs import JobKind, JobState
from core.lookalikes import product_with_lookalikes
from web.api import db, settings

_E = TypeVar("_E", bound=StrEnum)

bp = Blueprint("pages", __name__)

PER_PAGE = 48
JOBS_SHOWN = 30
SUGGESTED = 50  # values offered for one metadata field on the add page
MOST_PER_PAGE = 200
# The catalogue's hierarchy, as breadcrumbs above a product: each crumb adds one filter.
CRUMB_FIELDS = ("gender", "masterCategory", "articleType")
# Metadata shown first on a product page, in this order; any other keys follow.
NAME_FIELD = "productDisplayName"
DETAIL_ORDER = (NAME_FIELD, *FILTER_FIELDS, "subCategory", "season", "year", "usage")


def _whole_number(name: str, default: int, most: int) -> int:
    """A positive whole number from the query string, at most ``most``. Anything else falls
    back to ``default``: a reader following a mangled link should still see a page."""
    raw = request.args.get(name, "")
    # ASCII digits, and not too many: str.isdigit() also takes '²', which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or int(raw) < 1:
        return default
    return min(int(raw), most)


@bp.app_template_filter("seconds")
def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


@bp.app_template_filter("field_label")
def field_label(name: str) -> str:
    """A metadata column as a reader says it: ``articleType`` -> "Article type",
    ``base_colour`` -> "Base colour"; an acronym stays (``SKU`` -> "SKU")."""
    words = _WORD.findall(name.replace("_", " ").replace("-", " "))
    if not words:
        return name
    shown = [
        "ID" if w.lower() == "id" else w if w.isupper() and len(w) > 1 else w.lower() for w in words
    ]
    return " ".join(shown)[:1].upper() + " ".join(shown)[1:]


_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@bp.app_template_global()
def score_percent(score: float) -> float:
    """Width of a score bar: cosine similarity clamped to [0, 1], as a percentage."""
    return round(max(0.0, min(1.0, score)) * 100, 1)


@bp.get("/")
def catalogue() -> str:
    # A value no metadata can hold (a NUL character) is dropped like an empty one.
    filters = {
        name: value
        for name in FILTER_FIELDS
        if (value := request.args.get(name, "")) and "\x00" not in value
    }
    per_page = _whole_number("per_page", PER_PAGE, MOST_PER_PAGE)
    # Too long or with a NUL: searched for without the excess, as a mangled filter is dropped.
    query = request.args.get("q", "").replace("\x00", "")[:MAX_QUERY].strip()
    session = db()
    listing = browse_products(session, filters, _whole_number("page", 1, 10**9), per_page, query)
    return render_template(
        "catalogue.html",
        listing=listing,
        filters=catalogue_filters(session),
        chosen=filters,
        query=query,
        per_page=per_page if per_page != PER_PAGE else None,
    )


@bp.get("/go")
def go_to_product() -> Response:
    product_id = request.args.get("id", "").strip()
    if not product_id:
        return redirect(url_for("pages.catalogue"))
    return redirect(url_for("pages.product", product_id=product_id))


@bp.get("/products/<product_id>")
def product(product_id: str) -> Any:
    # The page holds what the lookalikes response holds, so it is kept by the same read cache,
    # dropped by the same writes (core.read_cache).
    body = current_app.extensions["lookalike.read_cache"].get(
        ("page", request.script_root, product_id), lambda: _product_page(product_id).encode()
    )
    return current_app.response_class(body, mimetype="text/html")


def _product_page(product_id: str) -> str:
    view = product_with_lookalikes(db(), product_id)
    meta: dict[str, Any] = dict(view.product.meta or {})
    details = [(key, meta.pop(key)) for key in DETAIL_ORDER if key in meta]
    details += sorted(meta.items())
    crumbs: list[tuple[str, dict[str, str]]] = []
    for key, value in details:
        if key in CRUMB_FIELDS:
            crumbs.append((str(value), {**(crumbs[-1][1] if crumbs else {}), key: str(value)}))
    grouping = partition.described(view.partition, view.product.meta)["group"]
    return render_template(
        "product.html",
        view=view,
        details=details,
        crumbs=crumbs,
        filter_fields=FILTER_FIELDS,
        grouping=grouping,
        token_required=bool(settings().api_token),
        fresh_after=settings().read_cache_seconds,
    )


@bp.get("/search")
def search() -> str:
    return render_template("search.html", token_required=bool(settings().api_token))


@bp.get("/add")
def add_products() -> str:
    session = db()
    # The catalogue's own fields, in the product page's order; the name is asked per photo.
    keys = set(metadata_keys(session)) - {NAME_FIELD}
    fields = [k for k in DETAIL_ORDER if k in keys] + sorted(keys.difference(DETAIL_ORDER))
    # Values already present are suggested, unless every one is used once (free text).
    suggested = {
        found.column: [option.value for option in found.options]
        for found in catalogue_filters(session, fields, most=SUGGESTED)
        if found.options[0].count > 1
    }
    return render_template(
        "add.html",
        token_required=bool(settings().api_token),
        fields=fields,
        suggested=suggested,
    )


@bp.get("/jobs")
def jobs() -> str:
    # Unknown values fall back to "any", like a mangled page number: the page still shows.
    state = _choice(JobState, request.args.get("state", ""))
    kind = _choice(JobKind, request.args.get("kind", ""))
    listing = jobs_page(db(), _whole_number("page", 1, 10**9), JOBS_SHOWN, state, kind)
    states = [s for s in JobState if s.shown is s]
    return render_template("jobs.html", listing=listing, states=states, kinds=list(JobKind))


def _choice(kind: type[_E], raw: str) -> _E | None:
    try:
        return kind(raw) if raw else None
    except ValueError:
        return None
