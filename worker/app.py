"""Celery configuration, from the same ``LOOKALIKE_*`` settings as everything else (each worker
process builds its own ``core.context.Context`` from them: ``worker.runtime``)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.errors import InvalidSetting
from core.jobs import JobStep
from core.settings import Settings, get_settings
from worker.leases import RenewLeases

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def broker_url(settings: Settings) -> str:
    return settings.broker_url or DEFAULT_BROKER


def _transport_options(visibility_timeout: int) -> dict[str, int]:
    # kombu sweeps for tasks of lost workers every interval * throttle seconds (100 s by
    # default); keep the sweep well inside a short visibility timeout. A worker killed during
    # a sweep leaves its mutex behind, blocking every sweep until it expires (300 s by
    # default): keep that short too (a sweep takes milliseconds, and restoring a message
    # twice is prevented by its own transaction).
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 4)),
        "unacked_restore_throttle": 1 if visibility_timeout < 300 else 10,
        "unacked_mutex_expire": max(5, min(300, visibility_timeout // 3)),
    }


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """With an embedding queue, index jobs' embedding chunks go there (GPU workers take them);
    everything else to the main queue."""
    if not settings.embed_queue:
        return {}
    return {JobStep.INDEX_CHUNK.value: {"queue": settings.embed_queue}}


def worker_queues(settings: Settings, embed_only: bool = False) -> list[str]:
    """The queues a worker takes: the main one and the embedding queue (when set), or, for a
    GPU worker (``embed_only``), the embedding queue alone.

    Raises:
        InvalidSetting: ``embed_only`` without an embedding queue.
    """
    if embed_only:
        if not settings.embed_queue:
            raise InvalidSetting("--embed-only needs LOOKALIKE_EMBED_QUEUE")
        return [settings.embed_queue]
    return [settings.queue] + ([settings.embed_queue] if settings.embed_queue else [])


def celery_config(settings: Settings) -> dict[str, Any]:
    """Delivery guarantees: late acknowledgement, re-queue when a worker is lost, one task
    prefetched at a time, time limits; embedding chunks routed (:func:`task_routes`). Job
    state lives in SQL, so results are not kept."""
    return {
        "task_routes": task_routes(settings),
        "broker_url": broker_url(settings),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(settings.visibility_timeout),
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 30, 1),
        # A new pool process loads the model before it reports up; Celery's default (4 s) is
        # shorter, so a replacement for a lost process was killed as hung, again and again.
        "worker_proc_alive_timeout": settings.worker_start_timeout,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
    }


def create_celery(settings: Settings | None = None) -> Celery:
    """The Celery app. Without ``settings`` the configuration is read on first use, not at
    import."""
    app = Celery("lookalike", include=["worker.tasks"])
    app.steps["consumer"].add(RenewLeases)
    if settings is None:
        app.add_defaults(lambda: celery_config(get_settings()))
    else:
        app.conf.update(celery_config(settings))
    return app
