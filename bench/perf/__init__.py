"""Performance benchmarks: throughput, latency and memory of the encoder, the neighbour build,
incremental updates, indexing (in-process and through the queue) and the read path.

Each module is a script (``python bench/perf/NAME.py`` or ``python -m bench.perf.NAME``) that
prints a table and appends it, dated, to BENCHMARKS.md; ``open_loop`` and ``fixed_body_app``
are helpers of ``read_path`` and ``read_instructions``. May import ``bench.common``, ``core``
and the entry packages (``web``, ``worker``), public names only; nothing imports it but bench.
"""
