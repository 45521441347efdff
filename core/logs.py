"""Logs people and machines can read: the job and the request a line belongs to, as text or as
one JSON object per line (``LOOKALIKE_LOG_FORMAT``).

Whatever runs a job step sets :data:`job_id` around it (the worker's task, the in-process
queue), the web app sets :data:`request_id` around each request; every record logged meanwhile
carries them, whichever module logged it. JSON lines come from python-json-logger.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

job_id: ContextVar[str | None] = ContextVar("lookalike_job_id", default=None)
request_id: ContextVar[str | None] = ContextVar("lookalike_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``request_id`` (None outside one) and their text form to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A record may name its job itself (logging's extra=): that one is kept.
        job = getattr(record, "job_id", None) or job_id.get()
        request = getattr(record, "request_id", None) or request_id.get()
        parts = [f"job={job}"] if job else []
        parts += [f"request={request}"] if request else []
        record.__dict__.update(
            job_id=job, request_id=request, context=f" [{' '.join(parts)}]" if parts else ""
        )
        return True


class _Json(JsonFormatter):
    """One object per line: time, level, logger, message, and job_id / request_id when set."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in ("job_id", "request_id"):
            value = getattr(record, name, None)
            if value:
                log_data[name] = value
        log_data.pop("context", None)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``LOOKALIKE_LOG_FORMAT`` (``text`` or ``json``)."""
    if fmt == "json":
        return _Json(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "context", "job_id", "request_id"],
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    return logging.Formatter(TEXT_FORMAT)


def handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` lines, job and request ids included, to ``stream`` (stderr)."""
    found = logging.StreamHandler(stream or sys.stderr)
    found.addFilter(ContextFilter())
    found.setFormatter(formatter(fmt))
    return found


def configure(fmt: str, level: int, stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger through one :func:`handler` on ``stream`` (stderr); returns it."""
    new = handler(fmt, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(new)
    root.setLevel(level)
    # faiss says at INFO which of its CPU builds it tried, in every process that imports it.
    logging.getLogger("faiss.loader").setLevel(max(level, logging.WARNING))
    return new


@contextmanager
def job_context(job: str | None) -> Iterator[None]:
    """Records logged inside carry ``job_id`` ``job``."""
    token = job_id.set(job)
    try:
        yield
    finally:
        job_id.reset(token)
