"""Lookalike core: everything that is not a web request, a queue message or a command line.

Owns image decoding, the VGG16 encoder, the neighbour maths, catalogue ingest, the SQLAlchemy
models, the neighbour table, and the steps of each job. It imports no Flask, no Celery, and none
of ``cli``, ``web``, ``worker`` or ``migrations`` (``tests/test_layers.py`` checks): layers point
down only. Nothing here opens, commits or closes a database session on its own: the edges (CLI
commands, web requests, worker tasks) own sessions and pass them in, with their process's
``core.context.Context``.
"""
