"""Where a warm add's time goes in a large catalogue: the add step a worker runs, here in one
process with the worker's own cache (``core.space_cache.SpaceCache``), profiled by cProfile.

Needs a database that `bench/scale.py --keep-database` left (catalogue, vectors and lists in
place) and the same settings (``LOOKALIKE_PCA_DIMS=0``, as scale.py runs its workers). Each
add creates one synthetic product with its vector already stored, as scale.py's updates stage
does, and runs ``core.job_steps.add_products`` on it: one cold add (the cache reads every
vector and list end), then ``--adds`` warm ones, timed, the last of them under cProfile.

    LOOKALIKE_PCA_DIMS=0 python bench/add_profile.py --database-url URL [--adds 5]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import base_vectors, write_added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-data")
    parser.add_argument("--top", type=int, default=30, help="functions shown")
    args = parser.parse_args()

    from cli.in_process import InProcessQueue
    from core.context import Context
    from core.job_steps import run_step
    from core.jobs import JobKind, JobStep, StepCall, create_job
    from core.settings import get_settings

    settings = get_settings(database_url=args.database_url)
    context = Context.create(settings, InProcessQueue())
    model_id = context.encoder.model_id
    base = base_vectors(args.data, args.data / "scale-cache" / "fashion-dev-64.npy")
    tag = uuid.uuid4().hex[:6]

    def add(n: int, profile: cProfile.Profile | None = None) -> float:
        ids = write_added(args.database_url, model_id, base, 1, tag, n)
        with context.session() as session:
            job = create_job(session, JobKind.ADD_PRODUCTS, {"product_ids": ids}, total=1)
            session.commit()
            started = time.perf_counter()
            if profile is not None:
                profile.enable()
            for _ in run_step(context, session, StepCall(JobStep.ADD_PRODUCTS, (job.id,))):
                session.commit()
            session.commit()
            if profile is not None:
                profile.disable()
            return time.perf_counter() - started

    cold = add(0)
    warm = [add(n) for n in range(1, args.adds)]
    profile = cProfile.Profile()
    warm.append(add(args.adds, profile))
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
    stats.print_stats(args.top)
    print(out.getvalue())
    print(
        f"cold add {cold:.3f} s; warm adds (s): {', '.join(f'{w:.3f}' for w in warm)}; "
        f"median {statistics.median(warm):.3f} s (the last under cProfile)"
    )


if __name__ == "__main__":
    main()
