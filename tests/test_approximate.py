"""Approximate full builds (issue 16, item 3): the probe is calibrated to the recall asked for,
the blocks search the stored index, and adds and deletes stay exact on an approximate table."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core import approximate
from core.approximate import BuildSearch, calibrate, large_groups
from core.encoder import PixelEncoder
from core.models import BuildBlock, BuildIndex, Embedding, Neighbour, Product
from core.neighbour_build import run_block
from core.neighbour_updates import update_lists
from core.neighbours import top_k
from core.products import stored_items
from core.space_reader import SqlSpaceReader
from core.spaces import Space, load_space_vectors
from tests.test_distributed_build import _clustered
from tests.test_indexing import _table

K = 10


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def _diffuse(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around centres, loosely: neighbours often lie in other lists."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim))
    rows = centres[rng.integers(0, len(centres), count)] + 2.0 * rng.standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_the_probe_is_calibrated_to_the_recall_asked_for() -> None:
    vectors = _diffuse(24_000, 64, seed=3)
    rows = np.arange(len(vectors))
    exact = top_k(vectors, K)
    probes = []
    for target in (0.5, 0.98):
        plan, index = calibrate(vectors, rows, K, target)
        assert plan.recall >= target and index.probe == plan.probe
        found = top_k(vectors, K, indexes={0: index})
        # The sample's estimate holds for the whole table (1,000 rows: within a point).
        assert _recall(found.positions, exact.positions) >= target - 0.01
        probes.append(plan.probe)
        # What it finds it scores exactly, as the exact build does.
        hit = found.positions[:, 0] == exact.positions[:, 0]
        assert np.array_equal(found.scores[hit, 0], exact.scores[hit, 0])
    assert probes[0] < probes[1]
    with pytest.raises(ValueError, match="exactly the candidate rows"):
        top_k(vectors, K, candidates=rows[:-1], indexes={0: index})


def test_auto_is_exact_below_its_threshold_and_small_groups_stay_exact() -> None:
    search = BuildSearch("auto", approximate_from=1000)
    assert not search.approximate(999) and search.approximate(1000)
    assert not BuildSearch("exact").approximate(10**9)
    groups = np.array([0] * approximate.MIN_ROWS + [1] * 5)
    assert list(large_groups(len(groups), groups)) == [0]


def _stored_catalogue(session: Session, model_id: str, vectors: np.ndarray) -> list[str]:
    ids = [f"p{n:05d}" for n in range(len(vectors))]
    session.add_all(
        Product(id=pid, meta={}, image_path=f"/nowhere/{pid}.jpg", content_hash=pid) for pid in ids
    )
    session.flush()  # the products before their vectors
    session.add_all(
        Embedding(
            product_id=pid,
            model_id=model_id,
            content_hash=pid,
            dim=vectors.shape[1],
            vector=vector.tobytes(),
        )
        for pid, vector in zip(ids, vectors, strict=True)
    )
    session.commit()
    return ids


def test_an_approximate_build_in_blocks_then_exact_updates(
    db_session: Session, pixel_encoder: PixelEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import in_process_context

    monkeypatch.setattr(approximate, "MIN_ROWS", 500)
    vectors = _clustered(4_000, 32, seed=5)
    model_id = pixel_encoder.model_id
    ids = _stored_catalogue(db_session, model_id, vectors)
    context = in_process_context(
        pixel_encoder, neighbour_search="approximate", build_block_rows=1500, neighbours=K
    )
    *_, job = index_catalogue(context, db_session, stored_items(db_session))
    assert job.state == "succeeded", job.error
    stored = db_session.scalars(select(BuildIndex).where(BuildIndex.job_id == job.id)).all()
    assert [(s.group_no, s.rows) for s in stored] == [(0, len(ids))]
    assert stored[0].recall >= 0.98 and 1 <= stored[0].probe <= approximate.lists_for(len(ids))
    assert job.result["neighbour_search"] == {
        "mode": "approximate",
        "sampled_recall": round(stored[0].recall, 4),
    }
    space = Space(model_id)
    lists = _lists(db_session)
    truth = top_k(vectors, K).positions
    found = np.array([[ids.index(n) for n in lists[pid]] for pid in ids])
    assert _recall(found, truth) >= 0.97

    # A block run again (a redelivery) searches the same stored index: nothing to write.
    db_session.get(BuildBlock, (job.id, 1)).state = "queued"  # type: ignore[union-attr]
    db_session.commit()
    for _ in run_block(db_session, job.id, 1, space, context.spaces, K, 64):
        db_session.commit()
    assert db_session.get(BuildBlock, (job.id, 1)).written == 0  # type: ignore[union-attr]
    before = _table(db_session)

    # An add on the approximate table is exact: the newcomer's list is its true top-k, and it
    # enters each old list exactly where it belongs.
    old_lists = _scored(db_session)
    newcomer = vectors[7] * 0.9 + vectors[8] * 0.1
    newcomer = (newcomer / np.linalg.norm(newcomer)).astype(np.float32)
    _stored_catalogue_row(db_session, model_id, "p99999", newcomer)
    update_lists(db_session, space, SqlSpaceReader(), K, 64)
    db_session.commit()
    every = load_space_vectors(db_session, space)
    exact_new = top_k(every.vectors, K, queries=[every.position("p99999")])
    after = _scored(db_session)
    assert [n for n, _ in after["p99999"]] == [every.ids[p] for p in exact_new.positions[0]]
    entered = 0
    for pid, held in old_lists.items():
        row = every.vectors[every.position(pid)].astype(np.float64)
        score = float(np.float32(row @ newcomer.astype(np.float64)))
        expected = sorted([*held, ("p99999", score)], key=lambda e: (-e[1], e[0]))[:K]
        assert after[pid] == expected, pid
        entered += ("p99999", score) in expected
    assert entered > 0
    assert len(_table(db_session)) == len(before) + K


def _stored_catalogue_row(session: Session, model_id: str, pid: str, vector: np.ndarray) -> None:
    session.add(Product(id=pid, meta={}, image_path=f"/nowhere/{pid}.jpg", content_hash=pid))
    session.flush()
    session.add(
        Embedding(
            product_id=pid,
            model_id=model_id,
            content_hash=pid,
            dim=len(vector),
            vector=vector.tobytes(),
        )
    )
    session.flush()


def _lists(session: Session) -> dict[str, list[str]]:
    return {pid: [n for n, _ in held] for pid, held in _scored(session).items()}


def _scored(session: Session) -> dict[str, list[tuple[str, float]]]:
    lists: dict[str, list[tuple[str, float]]] = {}
    rows = session.execute(
        select(Neighbour.product_id, Neighbour.neighbour_id, Neighbour.score).order_by(
            Neighbour.product_id, Neighbour.rank
        )
    )
    for pid, neighbour, score in rows:
        lists.setdefault(pid, []).append((neighbour, float(np.float32(score))))
    return lists
