"""A job's progress as people read it: a bar on a terminal, a log line every few seconds
anywhere else (a log file must not fill with carriage-return redraws)."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from tqdm import tqdm

log = logging.getLogger("lookalike.progress")

EVERY_SECONDS = 10.0


class Progress:
    """``update`` after each step; ``close`` at the end (the last state is always shown)."""

    def __init__(self, what: str, stream: IO[str] | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.bar: tqdm[Any] | None = None
        if self.stream.isatty():
            self.bar = tqdm(unit="img", desc=what, file=self.stream)
        self._shown_at = 0.0
        self._last: tuple[int, int | None, str | None] | None = None
        self._shown: tuple[int, int | None, str | None] | None = None

    def update(self, done: int, total: int | None, state: str | None = None) -> None:
        self._last = (done, total, state)
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            if state:
                self.bar.set_postfix(state=state, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self._shown_at >= EVERY_SECONDS:
            self._log()

    def _log(self) -> None:
        if self._last is None or self._last == self._shown:
            return
        done, total, state = self._last
        share = f" ({100 * done / total:.0f}%)" if total else ""
        extra = f", {state}" if state else ""
        log.info("%s %d/%s%s%s", self.what, done, total if total else "?", share, extra)
        self._shown, self._shown_at = self._last, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._log()
