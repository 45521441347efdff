"""Lookalike core: images, the VGG16 encoder, neighbour maths, catalogue ingest and SQL models.

Nothing in this package imports Flask or Celery, and nothing here opens, commits or closes a
database session on its own: the edges (CLI commands, web requests, worker tasks) own sessions.
"""
