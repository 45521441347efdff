"""Encoder throughput and precision, measured side by side in one run.

- model-only images/s on pre-made batches (the limit), in float32 and in bfloat16;
- the full pipeline (decode and preprocess on a thread pool, model, SQL write to SQLite) at the
  configured precision, and its ratio to model-only at that precision;
- the top-10 agreement between float32 and bfloat16 neighbour lists over a whole catalogue.

Runs alternate and each side's median is used.

    python bench/perf/encoder.py [--images 256] [--repeats 3] [--agreement-images 1217]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import median_time, record, unpacked
from core.catalogue import read_catalogue
from core.db import make_engine, make_sessionmaker
from core.encoder import VGG16Encoder
from core.model_spec import resolve_spec
from core.models import Embedding
from core.neighbours import top_k
from core.products import embed_pending, sync_products
from core.settings import get_settings
from migrations import upgrade


def _embed_all(encoder: VGG16Encoder, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [encoder.embed_batch(inputs[s : s + batch]) for s in range(0, len(inputs), batch)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agreement-images", type=int, default=1217)
    args = parser.parse_args()

    settings = get_settings()
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    catalogue = read_catalogue(unpacked("fashion-dev", work / "data"))
    batch = settings.batch_size
    encoders = {
        precision: VGG16Encoder(
            resolve_spec(settings.model_copy(update={"precision": precision})),
            settings.max_image_pixels,
        )
        for precision in ("float32", "bfloat16")
    }
    default_precision = resolve_spec(settings).precision
    default = encoders[default_precision]

    # The same photos for every measurement, decoded and preprocessed beforehand for model-only.
    pool = catalogue.items[: max(args.images, args.agreement_images)]
    inputs = np.stack([default.prepare(item.path) for item in pool])
    timed = inputs[: args.images]
    for encoder in encoders.values():
        encoder.embed_batch(timed[:batch])  # warm-up (graph tracing)

    url = f"sqlite:///{work / 'bench.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    items = catalogue.items[: args.images]
    with sessions() as session:
        sync_products(session, items)
        session.commit()
    pairs = [(item.product_id, str(item.path)) for item in items]

    def pipeline() -> None:
        with sessions() as session:
            session.query(Embedding).delete()
            session.commit()
            for _ in embed_pending(session, default, pairs, batch, settings.decode_workers):
                session.commit()

    times: dict[str, list[float]] = {"float32": [], "bfloat16": [], "pipeline": []}
    for _ in range(args.repeats):
        for precision, encoder in encoders.items():
            times[precision].append(
                median_time(lambda e=encoder: _embed_all(e, timed, batch), 1)  # type: ignore[misc]
            )
        times["pipeline"].append(median_time(pipeline, 1))
    rate = {name: len(timed) / float(np.median(values)) for name, values in times.items()}

    # Agreement: neighbour lists of the whole catalogue under each precision.
    started = time.perf_counter()
    everything = inputs[: args.agreement_images]
    lists = {
        precision: top_k(_embed_all(encoder, everything, batch), 10).positions
        for precision, encoder in encoders.items()
    }
    overlap = np.mean(
        [
            len(set(a) & set(b)) / 10
            for a, b in zip(lists["float32"], lists["bfloat16"], strict=True)
        ]
    )
    agreement_seconds = time.perf_counter() - started

    ratio = rate["pipeline"] / rate[default_precision]
    speedup = rate["bfloat16"] / rate["float32"]
    table = "\n".join(
        [
            "| measurement | value | peer | ratio | target | met? |",
            "|---|---|---|---|---|---|",
            f"| model only, float32, batches of {batch} | {rate['float32']:.2f} img/s "
            "| | 1.00 | | |",
            f"| model only, bfloat16, batches of {batch} | {rate['bfloat16']:.2f} img/s | float32 "
            f"| {speedup:.2f}x | | |",
            f"| full pipeline at {default_precision} (decode + preprocess on "
            f"{settings.decode_workers} threads, model, SQL write) "
            f"| {rate['pipeline']:.2f} img/s | "
            f"model only at {default_precision} | {ratio:.3f} | >= 0.90 | "
            f"{'yes' if ratio >= 0.9 else 'NO'} |",
            f"| top-10 agreement bfloat16 vs float32, {len(everything)} photos "
            f"| {overlap:.3f} | | | "
            f">= 0.95 to adopt bfloat16 | {'yes' if overlap >= 0.95 else 'NO'} |",
        ]
    )
    record(
        f"Encoder throughput and precision, {len(timed)} fashion-dev photos, "
        f"default {default.model_id}",
        table,
        f"Median of {args.repeats} alternating runs each; agreement pass took "
        f"{agreement_seconds:.0f} s. Command: `python bench/perf/encoder.py --images {args.images} "
        f"--repeats {args.repeats} --agreement-images {args.agreement_images}`.",
    )


if __name__ == "__main__":
    main()
