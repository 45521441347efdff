"""The Celery application: ``celery -A worker worker`` or ``lookalike worker``."""

from worker.app import create_celery

app = create_celery()
