"""Indexing against a real database (SQLite and PostgreSQL), with the fast pixel encoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.in_process import index_catalogue
from core.catalogue import CatalogueItem, read_catalogue
from core.db import make_engine, make_sessionmaker
from core.encoder import PixelEncoder
from core.errors import NotIndexed, ProductNotFound
from core.index_summary import IndexSummary
from core.jobs import job_errors
from core.list_ends import read_list_ends
from core.lookalikes import similar_products
from core.models import Embedding, Job, Neighbour, Product
from core.neighbour_table import lock_neighbour_table
from core.neighbour_updates import delete_products, rebuild_lists, update_lists
from core.neighbours import top_k
from core.products import embed_pending, pending_products, sync_products
from core.projection import fit_projection
from core.space_cache import SpaceCache
from core.space_reader import SqlSpaceReader
from core.spaces import ProjectionSettings, Space, load_space_vectors, resolve_space
from core.vectors import VectorSet, project
from tests.conftest import in_process_context
from tests.test_images import bad_files

K = 3
SQL = SqlSpaceReader()


def _colour_catalogue(root: Path, count: int = 12) -> Path:
    """Photos of a gradient whose colour drifts, so neighbours are well defined."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for index in range(count):
        base = rng.integers(0, 255, size=3)
        ramp = np.linspace(0, 1, 32)[None, :, None] * rng.integers(0, 255, size=3)
        pixels = np.clip(base + ramp + np.zeros((24, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"p{index:02d}.png")
    return root


def embed_all_pending(session: Session, encoder: PixelEncoder) -> None:
    for _ in embed_pending(session, encoder, pending_products(session, encoder.model_id), 4, 2):
        pass


def _run(session: Session, encoder: PixelEncoder, root: Path) -> IndexSummary:
    items = read_catalogue(root).items
    context = in_process_context(encoder, neighbours=K, block_size=5, batch_size=4)
    *_, job = index_catalogue(context, session, items)
    return IndexSummary.of(job)


def _table(session: Session) -> list[tuple[str, int, str, float]]:
    rows = session.execute(
        select(
            Neighbour.product_id, Neighbour.rank, Neighbour.neighbour_id, Neighbour.score
        ).order_by(Neighbour.product_id, Neighbour.rank)
    ).all()
    return [(a, b, c, round(d, 5)) for a, b, c, d in rows]


def _expected(session: Session, space: Space) -> list[tuple[str, int, str, float]]:
    return table_of(load_space_vectors(session, space))


def table_of(vectors: VectorSet, k: int = K) -> list[tuple[str, int, str, float]]:
    """The table a rebuild gives for these vectors."""
    lists = top_k(vectors.vectors, k)
    return sorted(
        (pid, rank + 1, vectors.ids[pos], round(float(score), 5))
        for pid, row, scores in zip(vectors.ids, lists.positions, lists.scores, strict=True)
        for rank, (pos, score) in enumerate(zip(row, scores, strict=True))
        if pos >= 0
    )


def test_index_builds_the_exact_table_and_reruns_skip_work(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path)
    first = _run(db_session, pixel_encoder, root)
    assert (first.products.added, first.embedded, first.failed) == (12, 12, 0)
    assert _table(db_session) == _expected(db_session, Space(pixel_encoder.model_id))
    assert len(_table(db_session)) == 12 * K

    again = _run(db_session, pixel_encoder, root)
    assert (again.embedded, again.skipped, again.lists_written) == (0, 12, 0)

    # A changed photo is embedded again; only lists that change are rewritten.
    Image.new("RGB", (32, 24), (250, 250, 250)).save(root / "images" / "p03.png")
    changed = _run(db_session, pixel_encoder, root)
    assert (changed.products.changed, changed.embedded) == (1, 1)
    assert 0 < changed.lists_written < 12
    assert _table(db_session) == _expected(db_session, Space(pixel_encoder.model_id))


def test_bad_images_are_recorded_and_the_rest_indexed(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path, count=6)
    for name, (path, _phrase) in bad_files(tmp_path).items():
        path.rename(root / "images" / name)
    encoder = PixelEncoder(max_pixels=20_000_000)
    summary = _run(db_session, encoder, root)
    job = db_session.get_one(Job, summary.job_id)
    assert (summary.embedded, summary.failed) == (6, 4)
    assert job.state == "succeeded" and job.done == 10 + 1  # the photos, then one block
    errors = {error.product_id: error.message for error in job_errors(db_session, job.id)}
    assert set(errors) == {"text", "empty", "truncated", "huge"}
    assert "truncated" in errors["truncated"] and "over the limit" in errors["huge"]
    assert {row[0] for row in _table(db_session)} == {f"p{i:02d}" for i in range(6)}
    with pytest.raises(NotIndexed, match="no vector"):
        similar_products(db_session, "text")


def test_changing_the_model_re_embeds_without_mixing(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path, count=8)
    _run(db_session, pixel_encoder, root)
    other = PixelEncoder(max_pixels=50_000_000, side=8)
    summary = _run(db_session, other, root)
    assert summary.embedded == 8 and summary.lists_written == 8
    models = db_session.scalars(select(Neighbour.space_id).distinct()).all()
    assert models == [other.model_id]
    count = db_session.scalar(select(func.count()).select_from(Embedding))
    assert count == 16  # both models' vectors are kept, each under its own id
    assert _table(db_session) == _expected(db_session, Space(other.model_id))


def test_incremental_add_and_delete_equal_a_full_rebuild(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    root = _colour_catalogue(tmp_path, count=14)
    items = read_catalogue(root).items
    first, later = items[::2], items[1::2]
    sync_products(db_session, first)
    for _ in embed_pending(
        db_session, pixel_encoder, pending_products(db_session, pixel_encoder.model_id), 4, 2
    ):
        pass
    rebuild_lists(db_session, Space(pixel_encoder.model_id), SQL, K, 4)

    sync_products(db_session, later)
    new = pending_products(db_session, pixel_encoder.model_id)
    for _ in embed_pending(db_session, pixel_encoder, new, 4, 2):
        pass
    written = update_lists(db_session, Space(pixel_encoder.model_id), SQL, K, 4)
    assert written >= len(later)
    assert _table(db_session) == _expected(db_session, Space(pixel_encoder.model_id))
    assert update_lists(db_session, Space(pixel_encoder.model_id), SQL, K, 4) == 0  # idempotent

    # A product whose photo is replaced: its vector changes, so lists that held it are redone.
    replaced = _table(db_session)[0][2]
    path = next(item.path for item in items if item.product_id == replaced)
    Image.new("RGB", (32, 24), (5, 250, 5)).save(path)
    sync_products(db_session, [item for item in items if item.product_id == replaced])
    for _ in embed_pending(
        db_session, pixel_encoder, pending_products(db_session, pixel_encoder.model_id), 4, 2
    ):
        pass
    update_lists(db_session, Space(pixel_encoder.model_id), SQL, K, 4, stale_ids=[replaced])
    assert _table(db_session) == _expected(db_session, Space(pixel_encoder.model_id))

    victim = _table(db_session)[0][2]
    delete_products(db_session, [victim], Space(pixel_encoder.model_id), SQL, K, 4)
    table = _table(db_session)
    assert victim not in {row[0] for row in table} | {row[2] for row in table}
    assert table == _expected(db_session, Space(pixel_encoder.model_id))
    with pytest.raises(ProductNotFound):
        similar_products(db_session, victim)


def test_deletes_that_shorten_lists_equal_a_full_rebuild(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    """With fewer than K others left, lists get shorter: no row may stay past their end."""
    items = read_catalogue(_colour_catalogue(tmp_path, count=5)).items
    model = Space(pixel_encoder.model_id)
    _add(db_session, pixel_encoder, items)
    rebuild_lists(db_session, model, SQL, K, 4)
    assert len(_table(db_session)) == 5 * K
    for victim in (items[1].product_id, items[3].product_id):
        delete_products(db_session, [victim], model, SpaceCache(), K, 4)
        assert _table(db_session) == _expected(db_session, model)
    assert len(_table(db_session)) == 3 * 2
    assert rebuild_lists(db_session, model, SQL, K, 4) == 0


def test_pca_projection_is_fitted_once_and_kept_for_adds(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    from core.models import ProjectionRecord

    root = _colour_catalogue(tmp_path, count=16)
    items = read_catalogue(root).items
    first, later = items[:12], items[12:]
    context = in_process_context(
        pixel_encoder,
        neighbours=K,
        block_size=5,
        batch_size=4,
        pca_dims=4,
        pca_power=0.5,
        source_dims=0,  # tests/test_photo_sources.py has them
    )
    *_, job = index_catalogue(context, db_session, first)
    summary = IndexSummary.of(job)
    space = Space.parse(summary.space_id)
    raw, tag = space.embedding_model_id, space.projection_tag or ""
    assert raw == pixel_encoder.model_id and tag.startswith("pca4-w0.75-p0.5-")
    assert {row[0] for row in db_session.execute(select(Neighbour.space_id))} == {space.id}
    assert _table(db_session) == _expected(db_session, space)
    projected = load_space_vectors(db_session, space).vectors
    assert projected.shape == (12, 4)

    # Adds keep the same projection, and stay exact with respect to it.
    sync_products(db_session, later)
    embed_all_pending(db_session, pixel_encoder)
    wanted = ProjectionSettings(dims=4, power=0.5, whiten=0.75)
    assert resolve_space(db_session, pixel_encoder.model_id, wanted) == space
    update_lists(db_session, space, SQL, K, 4)
    assert _table(db_session) == _expected(db_session, space)
    assert db_session.scalar(select(func.count()).select_from(ProjectionRecord)) == 1

    # An explicit refit learns from all 16 and rebuilds everything in the new space.
    refitted = resolve_space(db_session, pixel_encoder.model_id, wanted, refit=True)
    assert refitted != space
    assert rebuild_lists(db_session, refitted, SQL, K, 4) == 16
    assert _table(db_session) == _expected(db_session, refitted)


# --- a worker's SpaceCache: checked against the database on every use ----------------------


def _sessions(url: str) -> sessionmaker[Session]:
    """Another process's sessions: an engine of its own."""
    return make_sessionmaker(make_engine(url))


def _add(session: Session, encoder: PixelEncoder, items: list[CatalogueItem]) -> None:
    sync_products(session, items)
    for _ in embed_pending(session, encoder, pending_products(session, encoder.model_id), 4, 2):
        pass


def _assert_current(session: Session, cache: SpaceCache, space: Space) -> None:
    """What the cache gives equals what a fresh read gives, bit for bit."""
    cached = cache.vectors(session, space)
    fresh = load_space_vectors(session, space)
    assert cached.ids == fresh.ids
    assert np.array_equal(cached.vectors, fresh.vectors)
    ends = cache.list_ends(session, space, K, lock_neighbour_table(session))
    assert ends.along(cached).as_dict() == read_list_ends(session, space, K).as_dict()


def _warm(url: str, encoder: PixelEncoder, items: list[CatalogueItem]) -> SpaceCache:
    """Process A indexes ``items`` with its cache, as a worker's finalise task would."""
    cache = SpaceCache()
    with _sessions(url)() as session:
        _add(session, encoder, items)
        session.commit()
        rebuild_lists(session, Space(encoder.model_id), cache, K, 4)
        session.commit()
    return cache


def test_a_warm_cache_follows_another_process_and_equals_a_rebuild(
    shared_url: str,
    pixel_encoder: PixelEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=20)).items
    model = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items[:10])
    with _sessions(shared_url)() as other:  # another worker adds and links five products
        _add(other, pixel_encoder, items[10:15])
        other.commit()
        assert update_lists(other, model, SQL, K, 4) >= 5
        other.commit()

    # Process A catches up on both without reading everything again.
    def read_all(*_: object) -> None:
        raise AssertionError("a warm cache read everything again")

    monkeypatch.setattr("core.space_cache._read_vectors", read_all)
    monkeypatch.setattr("core.space_cache.read_list_ends", read_all)
    with _sessions(shared_url)() as session:
        assert update_lists(session, model, cache, K, 4) == 0  # nothing left to do
        session.commit()
        _add(session, pixel_encoder, items[15:])
        session.commit()
        assert update_lists(session, model, cache, K, 4) >= 5
        session.commit()
        assert _table(session) == _expected(session, model)
        monkeypatch.undo()
        _assert_current(session, cache, model)


def test_a_cache_is_read_again_after_another_process_deletes_or_replaces(
    shared_url: str, pixel_encoder: PixelEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import space_cache

    root = _colour_catalogue(tmp_path, count=14)
    items = read_catalogue(root).items
    model = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items)
    other = _sessions(shared_url)
    # From here on the cache follows the logs (vector changes, list writes): it reads again
    # only the products that changed, never everything.
    full_reads: list[str] = []
    for name in ("_read_vectors", "read_list_ends"):
        real = getattr(space_cache, name)
        monkeypatch.setattr(
            space_cache,
            name,
            lambda *a, _real=real, _name=name, **kw: full_reads.append(_name) or _real(*a, **kw),
        )

    with other() as session:
        delete_products(session, [items[3].product_id], model, SQL, K, 4)
        session.commit()
    with _sessions(shared_url)() as session:
        _assert_current(session, cache, model)
        assert items[3].product_id not in cache.vectors(session, model).ids
        assert update_lists(session, model, cache, K, 4) == 0
        session.commit()

    # A new photo, as the web app registers one: the old vector stays until it is redone.
    replaced = items[5].product_id
    with other() as session:
        session.execute(
            update(Product).where(Product.id == replaced).values(content_hash="a new photo")
        )
        session.commit()
    with _sessions(shared_url)() as session:
        _assert_current(session, cache, model)
        assert replaced not in cache.vectors(session, model).ids
        session.commit()
    Image.new("RGB", (32, 24), (5, 250, 5)).save(items[5].path)
    with other() as session:
        _add(session, pixel_encoder, [items[5]])
        update_lists(session, model, SQL, K, 4, stale_ids=[replaced])
        session.commit()
    with _sessions(shared_url)() as session:
        monkeypatch.undo()  # what a fresh read gives, to compare with
        _assert_current(session, cache, model)
        assert update_lists(session, model, cache, K, 4) == 0
        assert _table(session) == _expected(session, model)
    assert full_reads == []


def test_a_cache_keeps_nothing_from_a_rolled_back_transaction(
    shared_url: str, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=12)).items
    model = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items[:10])
    with _sessions(shared_url)() as session:
        _add(session, pixel_encoder, items[10:11])
        assert update_lists(session, model, cache, K, 4) >= 1
        assert items[10].product_id in cache.vectors(session, model).ids
        session.rollback()
        # Another process adds one, committed late: the row count is what it was with the
        # rolled-back one, so only having dropped what the rollback saw keeps the cache right.
        with _sessions(shared_url)() as other:
            _add(other, pixel_encoder, items[11:])
            other.execute(
                update(Embedding)
                .where(Embedding.product_id == items[11].product_id)
                .values(created_at=datetime.now(UTC) - timedelta(days=1))
            )
            other.commit()
        _assert_current(session, cache, model)
        assert items[10].product_id not in cache.vectors(session, model).ids
        update_lists(session, model, cache, K, 4)
        assert _table(session) == _expected(session, model)


def test_a_late_insert_outside_the_window_is_found_by_the_count(
    shared_url: str, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=11)).items
    model = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items[:10])
    with _sessions(shared_url)() as other:
        _add(other, pixel_encoder, items[10:])
        # As if created long ago and committed only now.
        other.execute(update(Embedding).values(created_at=datetime.now(UTC) - timedelta(days=1)))
        other.commit()
    with _sessions(shared_url)() as session:
        _assert_current(session, cache, model)
        assert items[10].product_id in cache.vectors(session, model).ids


def test_lists_written_outside_the_log_are_read_again(
    shared_url: str, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=10)).items
    model = Space(pixel_encoder.model_id)
    cache = _warm(shared_url, pixel_encoder, items)
    with _sessions(shared_url)() as other:  # a hand-made change no log records
        other.execute(update(Neighbour).where(Neighbour.rank == K).values(score=0.125))
        other.commit()
    with _sessions(shared_url)() as session:
        _assert_current(session, cache, model)
        ends = cache.list_ends(session, model, K, lock_neighbour_table(session))
        assert set(ends.as_dict().values()) == {0.125}


def test_projecting_a_row_alone_gives_the_bits_of_a_full_projection() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((1000, 48)).astype(np.float32)
    projection = fit_projection(data, 16, 0.5, 0.5)
    every = project(projection, data)
    for row in (0, 255, 256, 257, 999):
        assert np.array_equal(project(projection, data[row : row + 1])[0], every[row])
    picked = [3, 400, 401, 998]
    assert np.array_equal(project(projection, data[picked]), every[picked])


def test_vector_set_grows_in_id_order() -> None:
    base = VectorSet(["b", "d"], np.array([[2.0], [4.0]], dtype=np.float32))
    grown = base.with_rows(["a", "c", "e"], np.array([[1.0], [3.0], [5.0]], dtype=np.float32))
    # Looked up before its list of ids is made, then after.
    for _ in range(2):
        assert grown.count == 5
        assert grown.position("c") == 2 and grown.position("z") is None
        assert [grown.position(pid) for pid in "abcde"] == [0, 1, 2, 3, 4]
        assert grown.positions(["e", "a"]).tolist() == [4, 0]
        assert grown.positions_found(["z", "d"]).tolist() == [3]
        assert grown.ids_at(np.array([4, 0, 2, 1])) == ["e", "a", "c", "b"]
        assert grown.ids == ["a", "b", "c", "d", "e"]
    assert grown.vectors[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert grown.parent_ids is base.ids and grown.inserted_at is not None
    again = grown.with_rows(["bb", "f"], np.array([[2.5], [6.0]], dtype=np.float32))
    assert again.parent_ids is grown.held_ids and again.position("f") == 6
    assert again.ids_at([0, 2, 6]) == ["a", "bb", "f"]


def test_a_grown_set_writes_its_array_once_read_as_numpy_inserts_it() -> None:
    # Sets grown one from another stay one insertion into the last written array, written
    # only when read: the rows numpy.insert would give, grown one add at a time.
    rng = np.random.default_rng(4)
    ids = [f"p{n:03d}" for n in range(0, 200, 2)]
    written = rng.normal(size=(len(ids), 3)).astype(np.float32)
    current = VectorSet(ids, written)
    expected, expected_ids = written, ids
    # Into gaps, at both ends, two into one gap, and right before and after rows of an earlier
    # add ("p0045" sorts just before "p005").
    adds = [["p005"], ["p0045", "p0051"], ["a", "p101", "p103", "z"], ["p0044"], ["p00451"]]
    for new_ids in adds:
        rows = rng.normal(size=(len(new_ids), 3))  # float64: stored as the set's float32
        at = np.searchsorted(expected_ids, new_ids)
        expected_ids = sorted([*expected_ids, *new_ids])
        expected = np.insert(expected, at, rows.astype(np.float32), axis=0)
        current = current.with_rows(new_ids, rows)
        assert current.stored.base is written  # type: ignore[union-attr]
        assert [current.position(pid) for pid in new_ids] == (at + np.arange(len(at))).tolist()
        assert current.width == 3 and current.added is not None
        assert len(current.added) == len(new_ids)
    assert current.held_ids.base is ids  # type: ignore[union-attr]
    every = np.arange(len(expected))
    # Rows dropped before it is written: only inserted ones (its base kept as it is), only
    # the base's, both, and every inserted one.
    inserted_ids = [pid for pid in expected_ids if pid not in ids]
    for gone in (inserted_ids[:3], ["p000", "p198"], ["a", "p050", "p0045", "z"], inserted_ids):
        shrunk = current.without(gone)
        drop = [expected_ids.index(pid) for pid in gone]
        np.testing.assert_array_equal(shrunk.vectors, np.delete(expected, drop, axis=0))
        assert shrunk.ids == [pid for pid in expected_ids if pid not in gone]
    assert current.without(inserted_ids[:3]).stored.base is written  # type: ignore[union-attr]
    assert current.without(inserted_ids).stored is written
    np.testing.assert_array_equal(current.stored.rows_at(every), expected)  # type: ignore[union-attr]
    # Held as the set without some rows plus those rows: the same rows, another array.
    dropped = np.array([0, 5, 6, len(expected) - 1])
    kept = current.without([expected_ids[n] for n in dropped])
    current.hold_as(kept, dropped)
    assert current.stored.base is kept.vectors  # type: ignore[union-attr]
    np.testing.assert_array_equal(current.stored.rows_at(every), expected)  # type: ignore[union-attr]
    assert current.ids == expected_ids
    np.testing.assert_array_equal(current.vectors, expected)
    assert current.vectors is current.stored  # written once, the insertion let go


def test_a_set_grown_many_times_is_written_every_so_many_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("core.vectors._PENDING_MAX", 3)
    current = VectorSet(["m"], np.array([[0.0]], dtype=np.float32))
    bases = []
    for n, pid in enumerate(["c", "x", "a", "n", "b", "z", "d"], start=1):
        parent = current
        current = current.with_rows([pid], np.array([[float(n)]], dtype=np.float32))
        assert current.parent_ids is parent.held_ids
        bases.append(current.stored.base)  # type: ignore[union-attr]
    # The first array, then one written after 3 rows and one after 6.
    assert len({id(base) for base in bases}) == 3
    assert current.ids == sorted("mcxanbzd")
    assert current.vectors[:, 0].tolist() == [3, 5, 1, 7, 0, 4, 2, 6]


def test_ids_are_merged_as_numpy_inserts_them_few_or_many() -> None:
    from core.pending import PendingIds, ids_inserted

    ids = [f"p{n:03d}" for n in range(0, 300, 3)]
    for new in (["a"], ["p001", "p002", "z"], sorted(f"p{n:03d}" for n in range(1, 300, 7))):
        merged, at = ids_inserted(ids, new)
        assert merged == sorted([*ids, *new])
        assert at.tolist() == np.searchsorted(ids, new).tolist()
        pending = PendingIds(ids, new)
        assert [pending[n] for n in range(len(merged))] == merged == pending.listed


def test_vector_counts_follow_inserts_updates_and_deletes(db_session: Session) -> None:
    """The counts the triggers keep (what a worker's cache checks its rows against) equal a
    GROUP BY of the embeddings, after bulk and single inserts, an upsert, a vector rewritten,
    a product deleted (its vectors by cascade), a vector deleted, and a truncate."""
    from sqlalchemy import delete, func, insert, text, update

    from core.db import upsert
    from core.models import Embedding, Product, VectorCount

    def counts() -> dict[str, int]:
        kept = dict(db_session.execute(select(VectorCount.model_id, VectorCount.vectors)).all())  # type: ignore[arg-type]
        truth = select(Embedding.model_id, func.count()).group_by(Embedding.model_id)
        assert {m: n for m, n in kept.items() if n} == dict(db_session.execute(truth).all())  # type: ignore[arg-type]
        return {m: n for m, n in kept.items() if n}

    products = [
        {"id": f"v{n}", "meta": {}, "image_path": f"/x/{n}.png", "content_hash": f"h{n}"}
        for n in range(6)
    ]
    db_session.execute(insert(Product), products)

    def row(n: int, model: str) -> dict[str, object]:
        return {
            "product_id": f"v{n}",
            "model_id": model,
            "content_hash": f"h{n}",
            "dim": 2,
            "vector": b"\0" * 8,
        }

    db_session.execute(insert(Embedding), [row(n, "a") for n in range(5)] + [row(0, "b")])
    assert counts() == {"a": 5, "b": 1}
    db_session.add(Embedding(**row(5, "a")))  # type: ignore[arg-type]
    db_session.flush()
    upsert(db_session, Embedding.__table__, [row(1, "b"), row(2, "a")], ["product_id", "model_id"])
    assert counts() == {"a": 6, "b": 2}
    db_session.execute(update(Embedding).where(Embedding.product_id == "v3").values(dim=3))
    db_session.execute(delete(Product).where(Product.id == "v0"))
    db_session.execute(delete(Embedding).where(Embedding.product_id == "v1"))
    assert counts() == {"a": 4}
    if db_session.get_bind().dialect.name == "postgresql":
        db_session.execute(text("TRUNCATE embeddings"))
        assert counts() == {}


def test_the_entry_check_scores_each_old_row_against_every_newcomer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_best_score``, in place over every row (an add: most rows old) and gathered (few),
    across tile edges, equals each old row's best product with a newcomer."""
    import core.neighbour_updates as updates

    monkeypatch.setattr(updates, "_ENTER_TILE", (97, 2))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    new = np.array([5, 17, 400, 999])
    for old in (np.setdiff1d(np.arange(1000), new), np.arange(0, 1000, 7)):
        expected = (x[old] @ x[new].T).max(axis=1)
        np.testing.assert_allclose(updates._best_score(x, old, new), expected, rtol=1e-5)
