"""Each request's id: the client's ``X-Request-ID`` when it is a sane token (a proxy's, say),
else a new one; every log line of the request carries it (``core.logs``), and the response
says it back, so a user's report and the logs meet."""

from __future__ import annotations

import re
import uuid
from contextvars import Token

from flask import Flask, g
from flask import request as current_request
from werkzeug.wrappers import Response

from core import logs

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _start() -> None:
    given = current_request.headers.get(HEADER, "")
    g.request_id = given if _SANE.fullmatch(given) else uuid.uuid4().hex
    g.request_id_token = logs.request_id.set(g.request_id)


def _answer(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def _end(_exc: BaseException | None) -> None:
    token: Token[str | None] | None = g.pop("request_id_token", None)
    if token is not None:
        logs.request_id.reset(token)


def register(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_answer)
    app.teardown_request(_end)
