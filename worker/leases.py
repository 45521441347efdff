"""Leases on the tasks a worker holds. Redis keeps every delivered, unacknowledged task aside
with its delivery time, and hands it to another worker once that time is older than the
visibility timeout (the worker is presumed lost). A live worker therefore renews that time,
every quarter of the timeout, for each task it holds (running or reserved): a task comes back
one visibility timeout after its worker's last sign of life, however long it runs. The timeout
bounds how long a lost worker stalls a job; the task time limit alone bounds a task."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


def renewal_interval(visibility_timeout: float) -> float:
    """Seconds between renewals: a quarter of the timeout, so a missed renewal or two is safe."""
    return max(0.5, visibility_timeout / 4)


def renew_leases(consumer: Any) -> int:
    """Stamp every task this worker holds as delivered now; returns how many."""
    channel = getattr(consumer.task_consumer, "channel", None)
    index_key = getattr(channel, "unacked_index_key", None)
    if channel is None or index_key is None:  # not the Redis transport: nothing to renew
        return 0
    qos = channel.qos
    # Tags acknowledged but not yet flushed are in _dirty; their entries are already gone from
    # Redis, and XX below never adds one back.
    held = [tag for tag in list(qos._delivered) if tag not in qos._dirty]
    if not held:
        return 0
    try:
        with channel.conn_or_acquire() as client:
            client.zadd(index_key, dict.fromkeys(held, time.time()), xx=True)
    except channel.connection_errors as exc:
        # The consumer reconnects on its own; Redis hands the tasks on only if this lasts.
        log.warning("could not renew task leases: %s", exc)
        return 0
    return len(held)


class RenewLeases(bootsteps.StartStopStep):
    """Consumer step renewing the leases of this worker's tasks while it is connected."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.entry: Any = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        options = parent.app.conf.broker_transport_options or {}
        visibility = options.get("visibility_timeout")
        if visibility:
            self.entry = parent.timer.call_repeatedly(
                renewal_interval(visibility), renew_leases, (parent,)
            )

    def stop(self, parent: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    shutdown = stop
