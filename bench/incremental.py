"""Adding products to an indexed catalogue: the incremental update against a full rebuild.

For m in 1, 10, 100: m random products are taken out (their vectors removed and the table
brought to the catalogue without them), then put back; `update_neighbours` (what the workers
run) is timed, then `refresh_neighbours` (a full rebuild) is timed and must find nothing to
change, which shows the two tables are identical. Runs against the database that
LOOKALIKE_DATABASE_URL names (PostgreSQL with fashion-small indexed, for the 44k figures).

    python bench/incremental.py [--adds 1,10,100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adds", default="1,10,100")
    parser.add_argument("--database-url", default=os.environ.get("LOOKALIKE_DATABASE_URL"))
    args = parser.parse_args()

    from sqlalchemy import delete, func, insert, select

    from core.db import make_engine, make_sessionmaker
    from core.indexing import SPACE_SEPARATOR, refresh_neighbours, update_neighbours
    from core.models import Embedding, Neighbour
    from core.settings import get_settings

    settings = get_settings()
    k, block = settings.neighbours, settings.block_size
    sessions = make_sessionmaker(make_engine(args.database_url))
    with sessions() as session:
        model_id = session.scalars(
            select(Neighbour.model_id).group_by(Neighbour.model_id).order_by(func.count().desc())
        ).first()
        assert model_id, "no neighbour lists in that database"
        # Vectors are stored under the embedding model; the lists live in its projected space.
        embedding_model = model_id.partition(SPACE_SEPARATOR)[0]
        ids = sorted(
            session.scalars(
                select(Embedding.product_id).where(Embedding.model_id == embedding_model)
            )
        )
    rng = np.random.default_rng(1)
    rows = []
    for m in (int(value) for value in args.adds.split(",")):
        chosen = sorted(rng.choice(ids, size=m, replace=False).tolist())
        with sessions() as session:
            saved = [
                {c.name: getattr(e, c.name) for c in Embedding.__table__.columns}
                for e in session.scalars(
                    select(Embedding).where(
                        Embedding.model_id == embedding_model, Embedding.product_id.in_(chosen)
                    )
                )
            ]
            session.execute(
                delete(Embedding).where(
                    Embedding.model_id == embedding_model, Embedding.product_id.in_(chosen)
                )
            )
            refresh_neighbours(session, model_id, k, block)  # the catalogue without them
            session.commit()
            session.execute(insert(Embedding), saved)
            session.commit()

            start = time.perf_counter()
            written = update_neighbours(session, model_id, k, block)
            session.commit()
            incremental = time.perf_counter() - start

            start = time.perf_counter()
            left = refresh_neighbours(session, model_id, k, block)
            session.commit()
            full = time.perf_counter() - start
        rows.append((m, incremental, written, full, left))

    lines = [
        "| products added | incremental update | lists written | full rebuild | speed-up | "
        "identical (rebuild changed nothing) |",
        "|---|---|---|---|---|---|",
    ]
    for m, incremental, written, full, left in rows:
        lines.append(
            f"| {m} | {incremental:.2f} s | {written} | {full:.2f} s | {full / incremental:.0f}x "
            f"| {'yes' if left == 0 else f'NO: {left} lists differ'} |"
        )
    record(
        f"Incremental add against full rebuild, {len(ids):,} products, {model_id}",
        "\n".join(lines),
        "Both include reading vectors and lists from SQL and writing what changed, on "
        f"{make_engine(args.database_url).dialect.name}. Command: "
        f"`python bench/incremental.py --adds {args.adds}`.",
    )


if __name__ == "__main__":
    main()
