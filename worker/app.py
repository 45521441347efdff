"""Celery configuration, from the same ``LOOKALIKE_*`` settings as everything else (each worker
process builds its own ``core.context.Context`` from them: ``worker.runtime``)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.settings import Settings, get_settings

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def broker_url(settings: Settings) -> str:
    return settings.broker_url or DEFAULT_BROKER


def _transport_options(visibility_timeout: int) -> dict[str, int]:
    # kombu sweeps for tasks of lost workers every interval * throttle seconds (100 s by
    # default); keep the sweep well inside a short visibility timeout.
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 4)),
        "unacked_restore_throttle": 1 if visibility_timeout < 300 else 10,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Delivery guarantees: late acknowledgement, re-queue when a worker is lost, one task
    prefetched at a time, time limits. Job state lives in SQL, so results are not kept."""
    return {
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
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
    }


def create_celery(settings: Settings | None = None) -> Celery:
    """The Celery app. Without ``settings`` the configuration is read on first use, not at
    import."""
    app = Celery("lookalike", include=["worker.tasks"])
    if settings is None:
        app.add_defaults(lambda: celery_config(get_settings()))
    else:
        app.conf.update(celery_config(settings))
    return app
