"""Benchmarks and research harnesses: scripts, not part of the service or its tests.

``perf`` holds the performance benchmarks (results appended to BENCHMARKS.md), ``quality`` the
retrieval-quality harness (results in QUALITY.md), ``common`` what both share: where the data
sets are, the machine and commit a result came from, and how a result is recorded.

bench may import ``core`` and the entry packages (``web``, ``worker``), public names only;
nothing imports bench.
"""
