"""The seed's first version against Lookalike, per query image: rebuilding VGG16 and running
`predict` on one image per query, against one warm batched call of the loaded encoder.

    python bench/perf/seed_v1.py [--queries 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import record, unpacked
from core.catalogue import read_catalogue
from core.encoder import VGG16Encoder
from core.model_spec import resolve_spec
from core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    settings = get_settings()
    spec = resolve_spec(settings)
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    items = read_catalogue(unpacked("fashion-dev", work / "data")).items

    # Seed V1: every query builds the network, loads the weights and predicts one image.
    cold = []
    for item in items[: args.queries]:
        start = time.perf_counter()
        encoder = VGG16Encoder(spec, settings.max_image_pixels)
        encoder.embed_batch(encoder.prepare(item.path)[None, ...])
        cold.append(time.perf_counter() - start)

    # Lookalike: the model loaded once; a batch of photos decoded and embedded in one call.
    encoder = VGG16Encoder(spec, settings.max_image_pixels)
    encoder.embed_batch(encoder.prepare(items[0].path)[None, ...])  # warm-up
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        batch = np.stack([encoder.prepare(item.path) for item in items[: args.batch]])
        encoder.embed_batch(batch)
        warm.append((time.perf_counter() - start) / args.batch)
    cold_s, warm_s = float(np.median(cold)), float(np.median(warm))
    table = (
        "| path | seconds per image | ratio |\n|---|---|---|\n"
        f"| seed V1: model rebuilt per query, one `predict` per image | {cold_s:.3f} | "
        f"{cold_s / warm_s:,.0f}x slower |\n"
        f"| Lookalike: warm encoder, one call per batch of {args.batch} (decode included) | "
        f"{warm_s:.4f} | 1 |"
    )
    record(
        f"Seed V1 path against a warm batched call, {spec.model_id}",
        table,
        f"Medians over {args.queries} cold queries and 3 warm batches. Command: "
        f"`python bench/perf/seed_v1.py --queries {args.queries} --batch {args.batch}`.",
    )


if __name__ == "__main__":
    main()
