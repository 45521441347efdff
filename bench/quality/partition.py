"""Lookalikes within a group (LOOKALIKE_PARTITION): what grouping does to the lists.

Indexes ``fashion-dev`` once with the default encoder (``lookalike index``, the real job), then
rebuilds the same catalogue's lists under each grouping with ``lookalike index --stored``, as an
operator would after changing the setting (nothing is embedded again), and reports for each:
precision@10 on articleType (micro, macro), the share of neighbours of another gender (what
grouping by gender is for), how far the lists moved from the ungrouped ones (mean overlap of the
ten, lists unchanged, first neighbour unchanged), products left with a short list, and the
rebuild's time. Labels only score the lists; grouping uses metadata by design.

    python bench/quality/partition.py                 # about 4 minutes on 2 cores
    python bench/quality/partition.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ROOT, commit, machine, unpacked
from core.db import make_engine, make_sessionmaker
from core.evaluation import evaluate_lists, product_labels, stored_lists

K = 10
GROUPINGS = ["", "gender", "masterCategory", "gender,masterCategory"]


def _lookalike(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def _moved(lists: dict[str, list[str]], base: dict[str, list[str]]) -> dict[str, float]:
    common = [pid for pid in lists if pid in base]
    overlap = [len(set(lists[pid]) & set(base[pid])) / K for pid in common]
    return {
        "overlap": float(np.mean(overlap)),
        "unchanged": float(np.mean([lists[pid] == base[pid] for pid in common])),
        "first_unchanged": float(np.mean([lists[pid][:1] == base[pid][:1] for pid in common])),
    }


def _other(lists: dict[str, list[str]], labels: dict[str, str]) -> float:
    """Share of neighbours whose ``labels`` value differs from their product's."""
    pairs = [(labels.get(p), labels.get(n)) for p, ns in lists.items() for n in ns]
    known = [(a, b) for a, b in pairs if a is not None and b is not None]
    return sum(a != b for a, b in known) / len(known) if known else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="Default: a new SQLite file.")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-data")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    catalogue = unpacked("fashion-dev", args.data)
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-partition-"))
    url = args.database_url or f"sqlite:///{workdir / 'partition.db'}"
    env = {**os.environ, "LOOKALIKE_DATABASE_URL": url, "LOOKALIKE_MEDIA_DIR": str(workdir)}
    env.pop("LOOKALIKE_PARTITION", None)
    env.pop("LOOKALIKE_BROKER_URL", None)
    indexed = _lookalike(env, "index", str(catalogue))
    print(f"indexed {catalogue} in {indexed:.0f} s")

    sessions = make_sessionmaker(make_engine(url))
    with sessions() as session:
        types, genders = product_labels(session, "articleType"), product_labels(session, "gender")
    rows = []
    base: dict[str, list[str]] = {}
    for grouping in GROUPINGS:
        seconds = _lookalike({**env, "LOOKALIKE_PARTITION": grouping}, "index", "--stored")
        with sessions() as session:
            lists, spaces = stored_lists(session)
        if not grouping:
            base = lists
        scored = evaluate_lists(grouping or "none", lists, types, "articleType", K)
        row = {
            "grouping": grouping or "(none)",
            "spaces": sorted(spaces),
            "micro": scored.micro_precision,
            "macro": scored.macro_precision,
            "other_gender": _other(lists, genders),
            "short_lists": sum(len(ns) < K for ns in lists.values()),
            "lists": len(lists),
            "rebuild_s": seconds,
            **_moved(lists, base),
        }
        rows.append(row)
        print(json.dumps(row))

    print(f"\n{machine()}, commit {commit()}, fashion-dev ({len(types)} products)\n")
    print(
        "| grouping | P@10 micro | P@10 macro | neighbours of another gender | overlap with "
        "ungrouped | lists unchanged | first neighbour unchanged | lists < 10 | rebuild s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['grouping']} | {row['micro']:.3f} | {row['macro']:.3f} | "
            f"{row['other_gender']:.3f} | {row['overlap']:.3f} | {row['unchanged']:.3f} | "
            f"{row['first_unchanged']:.3f} | {row['short_lists']} | {row['rebuild_s']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
