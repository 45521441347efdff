"""Projected vectors stored beside the embeddings (issue 16, item 2): an index job writes them, an
add writes its newcomers', readers use them and project only what has none, a vector embedded
again drops them, and the projection is fitted in one pass over chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core import projected
from core.catalogue import read_catalogue
from core.encoder import PixelEncoder
from core.index_summary import IndexSummary
from core.models import ProjectedVector
from core.pipeline import EmbeddedBatch
from core.products import store_batch
from core.projection import fit_projection
from core.space_cache import SpaceCache
from core.spaces import Space, load_space_vectors, projection_of
from core.submissions import submit_add_products
from core.uploads import Upload
from core.vectors import load_embeddings, project
from tests.conftest import in_process_context
from tests.test_indexing import _colour_catalogue, _table, table_of
from tests.test_partition import _photo
from tests.test_projection import _catalogue

K = 4


def _projected_rows(session: Session) -> dict[str, bytes]:
    return dict(session.execute(select(ProjectedVector.product_id, ProjectedVector.vector)).all())


def test_index_and_add_store_projected_rows_that_readers_use(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=16)).items
    context = in_process_context(pixel_encoder, neighbours=K, pca_dims=4, source_dims=0)
    *_, job = index_catalogue(context, db_session, items[:12])
    space = Space.parse(IndexSummary.of(job).space_id)
    projection = projection_of(db_session, space)
    assert projection is not None and space.projection_tag is not None

    # Every vector has its projected row: the bits the projection gives its embedding.
    raw = load_embeddings(db_session, pixel_encoder.model_id)
    stored = _projected_rows(db_session)
    assert sorted(stored) == raw.ids
    expected = project(projection, raw.vectors)
    got = np.stack([np.frombuffer(stored[pid], dtype="<f4") for pid in raw.ids])
    assert np.array_equal(got, expected)
    assert np.array_equal(load_space_vectors(db_session, space).vectors, expected)

    # Readers use the stored rows (a row changed in place shows), and a row whose content
    # hash is not the embedding's is ignored: its vector is projected from the embedding.
    first = raw.ids[0]
    odd = np.roll(expected[0], 1).astype("<f4").tobytes()
    db_session.execute(
        update(ProjectedVector).where(ProjectedVector.product_id == first).values(vector=odd)
    )
    assert load_space_vectors(db_session, space).vectors[0].tobytes() == odd
    assert SpaceCache().vectors(db_session, space).vectors[0].tobytes() == odd
    db_session.execute(
        update(ProjectedVector)
        .where(ProjectedVector.product_id == first)
        .values(content_hash="0" * 64)
    )
    assert np.array_equal(load_space_vectors(db_session, space).vectors, expected)
    assert np.array_equal(SpaceCache().vectors(db_session, space).vectors, expected)
    # The next fill rewrites it.
    assert projected.fill(db_session, pixel_encoder.model_id, space.projection_tag, projection) == 1
    assert _projected_rows(db_session)[first] == expected[0].tobytes()

    # A vector embedded again drops its projected rows.
    again = EmbeddedBatch([first], raw.vectors[:1], [])
    store_batch(db_session, pixel_encoder.model_id, again, None)
    assert first not in _projected_rows(db_session)
    projected.fill(db_session, pixel_encoder.model_id, space.projection_tag, projection)

    # An add writes its newcomers' rows; the lists stay those of a rebuild.
    for _ in index_catalogue(context, db_session, items):
        pass
    assert len(_projected_rows(db_session)) == 16
    assert _table(db_session) == table_of(load_space_vectors(db_session, space), k=K)


def test_an_add_job_writes_its_newcomers_rows(
    db_session: Session, pixel_encoder: PixelEncoder, tmp_path: Path
) -> None:
    items = read_catalogue(_colour_catalogue(tmp_path, count=12)).items
    context = in_process_context(
        pixel_encoder, neighbours=K, pca_dims=4, source_dims=0, media_dir=tmp_path / "media"
    )
    *_, job = index_catalogue(context, db_session, items)
    space = Space.parse(IndexSummary.of(job).space_id)
    submit_add_products(context, db_session, [Upload(f"n{n}.png", _photo(n)) for n in (1, 2)])
    for _ in context.queue.run(context, db_session):  # type: ignore[attr-defined]
        pass
    rows = _projected_rows(db_session)
    assert len(rows) == 14
    raw = load_embeddings(db_session, pixel_encoder.model_id)
    projection = projection_of(db_session, space)
    assert projection is not None
    expected = project(projection, raw.vectors)
    assert [rows[pid] for pid in raw.ids] == [row.tobytes() for row in expected]
    assert _table(db_session) == table_of(load_space_vectors(db_session, space), k=K)


def test_a_projection_fitted_over_chunks_equals_one_over_the_whole() -> None:
    vectors = _catalogue(count=20_000, d=24)
    whole = fit_projection(vectors, dims=6, power=0.5)
    chunks = fit_projection((vectors[s : s + 777] for s in range(0, len(vectors), 777)), 6, 0.5)
    np.testing.assert_allclose(chunks.mean, whole.mean, atol=1e-12)
    np.testing.assert_allclose(chunks.components, whole.components, rtol=1e-7, atol=1e-9)
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    np.testing.assert_allclose(
        np.cov(centred.T), (centred.T @ centred) / (len(vectors) - 1), atol=1e-12
    )
