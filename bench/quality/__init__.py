"""The retrieval-quality research harness: which label-free VGG16 feature recipe finds the most
similar products, by measurement.

``quality`` is the script (``python bench/quality/quality.py`` or
``python -m bench.quality.quality``) that writes QUALITY.md and the full table of scored recipes
to docs/quality-recipes.csv; ``pooled_features`` computes and caches the pooled trunk outputs,
``recipes`` turns them into vectors and neighbour lists, ``ssl_head`` trains the
self-supervised head. May import ``bench.common``, ``core`` and the entry packages, public
names only; nothing imports it but bench.
"""
