"""The Celery application: ``celery -A worker worker`` or ``lookalike worker``.

Owns the queue (Celery on Redis) and the worker processes, each holding its context and model
for its whole life; tasks are thin wrappers over ``core.job_steps``. May import ``core`` only.
"""

from worker.app import create_celery

app = create_celery()
