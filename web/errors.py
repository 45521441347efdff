"""One place that turns every error into ``{"error": {"code": ..., "message": ...}}``, or, for
a page (or a browser asking for an unknown address), into an HTML error page."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from core.errors import JobNotFound, LookalikeError, ProductNotFound, UploadRejected


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def wants_html() -> bool:
    """True for the pages, and for an address that matched no route when a browser asked for
    it. The API, the photos and every non-browser client keep the JSON shape."""
    if request.blueprint == "pages":
        return True
    return (
        request.url_rule is None
        and not request.path.startswith(("/api/", "/images/"))
        and request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"
    )


def error_page(status: int, message: str) -> Any:
    title = HTTP_STATUS_CODES.get(status, "Error")
    return render_template("error.html", status=status, title=title, message=message), status


def register(app: Flask) -> None:
    @app.url_value_preprocessor
    def refuse_nul_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
        """No id holds a NUL character (and PostgreSQL refuses one in a parameter): not found,
        as JSON for the API and as the error page for pages, on every route."""
        for name, value in (values or {}).items():
            if isinstance(value, str) and "\x00" in value:
                raise JobNotFound(value) if name == "job_id" else ProductNotFound(value)

    @app.errorhandler(LookalikeError)
    def domain_error(exc: LookalikeError) -> Any:
        if wants_html():
            return error_page(exc.status, exc.message)
        extra = {}
        if isinstance(exc, UploadRejected):
            extra["rejected"] = [r.as_dict() for r in exc.rejected]
        return jsonify(error_body(exc.code, exc.message, **extra)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if wants_html():
            return error_page(exc.code or 500, exc.description or exc.name)
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error_body(code, exc.description or exc.name)), exc.code or 500
