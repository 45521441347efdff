"""Each request's id: the client's ``X-Request-ID`` when it is a sane token (a proxy's, say),
else a new one; every log line of the request carries it (``core.logs``), and the response
says it back, so a user's report and the logs meet."""

from __future__ import annotations

import os
import re
from contextvars import Token

from flask import Flask, g
from flask import request as current_request
from werkzeug.wrappers import Response

from core import logs

HEADER = "X-Request-ID"
_ENVIRON_KEY = "HTTP_X_REQUEST_ID"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _start() -> None:
    # Straight from the WSGI environ and 16 random bytes in hex (uuid4's length): this runs on
    # every request, and Werkzeug's header view and uuid4 cost more than the read cache's hit
    # (bench/perf/read_tail.py's profile).
    given = current_request.environ.get(_ENVIRON_KEY, "")
    g.request_id = given if given and _SANE.fullmatch(given) else os.urandom(16).hex()
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
