"""Adds that grow a catalogue well past what its projection was fitted on queue a refit of it
(core.refits): an index job of the stored catalogue that fits the projection again and rebuilds
every list in the new space."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from core.catalogue import read_catalogue
from core.context import Context
from core.encoder import PixelEncoder
from core.index_summary import IndexSummary
from core.jobs import JobKind
from core.models import Job, Neighbour, ProjectionRecord
from core.refits import queue_refit_when_grown
from core.spaces import Space, load_space_vectors
from core.submissions import submit_add_products
from core.uploads import Upload
from tests.conftest import in_process_context
from tests.test_indexing import _colour_catalogue, _table, table_of
from tests.test_partition import _photo

K = 3


def _add(context: Context, session: Session, numbers: Iterable[int]) -> None:
    submit_add_products(context, session, [Upload(f"n{n}.png", _photo(n)) for n in numbers])
    for _ in context.queue.run(context, session):  # type: ignore[attr-defined]
        pass


def _projections(session: Session) -> list[ProjectionRecord]:
    return list(session.scalars(select(ProjectionRecord).order_by(ProjectionRecord.created_at)))


def _index_jobs(session: Session) -> list[Job]:
    query = select(Job).where(Job.kind == JobKind.INDEX.value).order_by(Job.created_at)
    return list(session.scalars(query))


def _start(session: Session, tmp_path: Path, growth: float) -> tuple[Context, Space]:
    items = read_catalogue(_colour_catalogue(tmp_path, count=12)).items
    context = in_process_context(
        PixelEncoder(max_pixels=50_000_000),
        neighbours=K,
        pca_dims=4,
        source_dims=2,
        media_dir=tmp_path / "media",
        refit_growth=growth,
    )
    *_, job = index_catalogue(context, session, items)
    return context, Space.parse(IndexSummary.of(job).space_id)


def test_adds_that_grow_the_catalogue_by_half_refit_its_projection(
    db_session: Session, tmp_path: Path
) -> None:
    context, first = _start(db_session, tmp_path, 1.5)
    assert [record.fitted_on for record in _projections(db_session)] == [12]

    _add(context, db_session, range(1, 6))  # 17 vectors: under 1.5 x 12
    assert len(_projections(db_session)) == 1 and len(_index_jobs(db_session)) == 1
    assert set(db_session.scalars(select(Neighbour.space_id))) == {first.id}

    _add(context, db_session, range(6, 8))  # 19: the add that gets there queues the refit
    records = _projections(db_session)
    assert [record.fitted_on for record in records] == [12, 19]
    refit = _index_jobs(db_session)[-1]
    assert refit.state == "succeeded" and refit.params["refit"] is True
    assert "from 12 to 19 vectors" in refit.params["reason"]
    space = Space(first.embedding_model_id, records[-1].tag)
    assert IndexSummary.of(refit).space_id == space.id
    assert set(db_session.scalars(select(Neighbour.space_id))) == {space.id}
    assert _table(db_session) == table_of(load_space_vectors(db_session, space), k=K)

    # An add that resolved its space before the refit ended decides on the newest projection.
    assert queue_refit_when_grown(context, db_session, first) is None

    _add(context, db_session, [8])  # 20 against the new fit's 19: nothing more
    assert len(_index_jobs(db_session)) == 2
    assert _table(db_session) == table_of(load_space_vectors(db_session, space), k=K)


def test_no_refit_when_the_growth_is_off(db_session: Session, tmp_path: Path) -> None:
    context, first = _start(db_session, tmp_path, 0)
    _add(context, db_session, range(1, 13))  # twice the catalogue
    assert len(_projections(db_session)) == 1 and len(_index_jobs(db_session)) == 1
    assert set(db_session.scalars(select(Neighbour.space_id))) == {first.id}
