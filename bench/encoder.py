"""Encoder throughput: model-only on pre-made batches against the full pipeline, same run.

The full pipeline decodes and preprocesses JPEGs on a thread pool, runs the model, and writes
vectors to SQL (SQLite in a temporary folder). Runs alternate, and each side's median is used.

    python bench/encoder.py [--images 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_time, record, unpacked
from core.catalogue import read_catalogue
from core.db import make_engine, make_sessionmaker, upgrade
from core.encoder import load_encoder
from core.indexing import embed_pending, sync_products
from core.models import Embedding
from core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    settings = get_settings()
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    catalogue = read_catalogue(unpacked("fashion-dev", work / "data"))
    items = catalogue.items[: args.images]
    encoder = load_encoder(settings)
    batch = settings.batch_size

    # Model-only: the same photos, decoded and preprocessed beforehand.
    inputs = np.stack([encoder.prepare(item.path) for item in items])
    encoder.embed_batch(inputs[:batch])  # warm-up (graph tracing)

    def model_only() -> None:
        for start in range(0, len(inputs), batch):
            encoder.embed_batch(inputs[start : start + batch])

    url = f"sqlite:///{work / 'bench.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with sessions() as session:
        sync_products(session, items)
        session.commit()
    pairs = [(item.product_id, str(item.path)) for item in items]

    def pipeline() -> None:
        with sessions() as session:
            session.query(Embedding).delete()
            session.commit()
            for _ in embed_pending(session, encoder, pairs, batch, settings.decode_workers):
                session.commit()

    model_times, pipeline_times = [], []
    for _ in range(args.repeats):
        model_times.append(median_time(model_only, 1))
        pipeline_times.append(median_time(pipeline, 1))
    model_s, pipe_s = float(np.median(model_times)), float(np.median(pipeline_times))
    n = len(items)
    ratio = (n / pipe_s) / (n / model_s)
    table = (
        "| stage | images/s | ratio to model-only | target |\n|---|---|---|---|\n"
        f"| model only, pre-made batches of {batch} | {n / model_s:.2f} | 1.00 | |\n"
        f"| full pipeline (decode + preprocess on {settings.decode_workers} threads, model, "
        f"SQL write) | {n / pipe_s:.2f} | {ratio:.3f} | >= 0.90 "
        f"{'met' if ratio >= 0.9 else 'MISSED'} |"
    )
    record(
        f"Encoder throughput, {n} fashion-dev photos, {encoder.model_id}",
        table,
        f"Median of {args.repeats} alternating runs each. Command: `python bench/encoder.py "
        f"--images {args.images} --repeats {args.repeats}`.",
    )


if __name__ == "__main__":
    main()
