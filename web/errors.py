"""One place that turns every error into ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from core.errors import LookalikeError
from core.uploads import UploadRejected


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def register(app: Flask) -> None:
    @app.errorhandler(LookalikeError)
    def domain_error(exc: LookalikeError) -> Any:
        extra = {}
        if isinstance(exc, UploadRejected):
            extra["rejected"] = [r.as_dict() for r in exc.rejected]
        return jsonify(error_body(exc.code, exc.message, **extra)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error_body(code, exc.description or exc.name)), exc.code or 500
