"""Spaces: which vectors, under which projection, a job's neighbour lists are built in.

A space is an embedding model's own vectors, or those vectors through a PCA-whitening projection
fitted on this catalogue. It is resolved once per job (:func:`resolve_space`) and passed along
as a :class:`Space`; its text form (``<embedding model id>|<projection tag>``), stored with every
list, is built and parsed here and nowhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import projected
from core.errors import NotIndexed
from core.models import ProjectionRecord, VectorCount
from core.nuisance import sample_ids
from core.projection import Projection, fit_projection
from core.settings import Settings
from core.vectors import VectorSet, current_ids, embedding_chunks, load_embeddings

_SEPARATOR = "|"
_BY = "by:"


@dataclass(frozen=True)
class Space:
    """An embedding model id, the tag of the stored projection applied to its vectors (None:
    the vectors as they are), and the metadata columns lists are grouped by (``core.partition``;
    none: one group)."""

    embedding_model_id: str
    projection_tag: str | None = None
    partition: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The text stored with each list: the model id, then ``|tag`` when projected, then
        ``|by:col1,col2`` when grouped."""
        parts = [self.embedding_model_id]
        if self.projection_tag is not None:
            parts.append(self.projection_tag)
        if self.partition:
            parts.append(_BY + ",".join(self.partition))
        return _SEPARATOR.join(parts)

    @classmethod
    def parse(cls, space_id: str) -> Space:
        embedding_model_id, *rest = space_id.split(_SEPARATOR)
        tag = next((part for part in rest if not part.startswith(_BY)), None)
        by = next((part[len(_BY) :] for part in rest if part.startswith(_BY)), "")
        return cls(embedding_model_id, tag or None, tuple(by.split(",")) if by else ())

    def grouped(self, partition: tuple[str, ...]) -> Space:
        """The same vectors with lists grouped by ``partition``."""
        return replace(self, partition=partition)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class ProjectionSettings:
    """The projection a catalogue's lists should use: ``dims`` 0 means none."""

    dims: int
    power: float = 1.0
    whiten: float = 1.0
    source_dims: int = 0  # directions of photo source removed first (core.nuisance)

    @classmethod
    def of(cls, settings: Settings) -> ProjectionSettings:
        return cls(settings.pca_dims, settings.pca_power, settings.pca_whiten, settings.source_dims)


def resolve_space(
    session: Session,
    embedding_model_id: str,
    wanted: ProjectionSettings,
    *,
    refit: bool = False,
    fit: bool = True,
    source_basis: Callable[[VectorSet, int], np.ndarray | None] | None = None,
) -> Space:
    """The space lists of ``embedding_model_id`` are built in under ``wanted``.

    A projection is fitted once, when there is none yet and the catalogue has at least
    ``2 * dims`` vectors (before that, lists use the embedding vectors as they are), and again
    only when ``refit`` asks for it; adds therefore keep projecting with the same parameters.
    ``fit=False`` (a search) uses what is stored and never fits. With ``wanted.source_dims``,
    ``source_basis(sample, rank)`` gives the directions to remove first from the vectors of a
    sample of the catalogue (``core.nuisance``). The fit reads the embeddings a chunk at a
    time; writing their projected rows is the caller's (``core.projected.fill``).
    """
    if wanted.dims <= 0:
        return Space(embedding_model_id)
    tag = _stored_tag(session, embedding_model_id, wanted)
    if tag is not None and not refit:
        return Space(embedding_model_id, tag)
    if not fit:
        return Space(embedding_model_id)
    ids = current_ids(session, embedding_model_id)
    if len(ids) < 2 * wanted.dims:
        return Space(embedding_model_id, tag)
    nuisance = None
    if wanted.source_dims > 0:
        if source_basis is None:
            raise ValueError("a projection with source_dims needs a source_basis to fit")
        sample = load_embeddings(session, embedding_model_id, sample_ids(ids))
        nuisance = source_basis(sample, wanted.source_dims)
    # A pass over the embeddings a chunk at a time: memory independent of the catalogue's size.
    chunks = embedding_chunks(session, embedding_model_id)
    projection = fit_projection(chunks, wanted.dims, wanted.power, wanted.whiten, nuisance=nuisance)
    _store_projection(session, embedding_model_id, wanted, projection, len(ids))
    return Space(embedding_model_id, projection.tag)


def refit_due(session: Session, space: Space, growth: float) -> str | None:
    """Why the projection of ``space`` should be fitted again, or None: the catalogue holds
    ``growth`` times the vectors it was fitted on (0: never). One row read (``VectorCount``,
    kept by triggers), whatever the catalogue's size."""
    if growth <= 0 or space.projection_tag is None:
        return None
    record = session.get(ProjectionRecord, space.projection_tag)
    if record is None:
        return None
    now = session.scalar(
        select(VectorCount.vectors).where(VectorCount.model_id == space.embedding_model_id)
    )
    if now is None or now < growth * record.fitted_on:
        return None
    return (
        f"the catalogue has grown from {record.fitted_on} to {now} vectors since its "
        f"projection {record.tag} was fitted"
    )


def _stored_tag(
    session: Session, embedding_model_id: str, wanted: ProjectionSettings
) -> str | None:
    """The newest stored projection of this model with these parameters (its tag only: the
    projection itself is read where vectors are projected)."""
    return session.scalars(
        select(ProjectionRecord.tag)
        .where(
            ProjectionRecord.embedding_model_id == embedding_model_id,
            ProjectionRecord.dims == wanted.dims,
            ProjectionRecord.power == wanted.power,
            ProjectionRecord.whiten == wanted.whiten,
            ProjectionRecord.source_dims == wanted.source_dims,
        )
        .order_by(ProjectionRecord.created_at.desc())
        .limit(1)
    ).first()


def _store_projection(
    session: Session,
    embedding_model_id: str,
    wanted: ProjectionSettings,
    projection: Projection,
    fitted_on: int,
) -> None:
    if session.get(ProjectionRecord, projection.tag) is not None:
        return
    session.add(
        ProjectionRecord(
            tag=projection.tag,
            embedding_model_id=embedding_model_id,
            dims=wanted.dims,
            whiten=wanted.whiten,
            power=wanted.power,
            source_dims=wanted.source_dims,
            fitted_on=fitted_on,
            data=projection.to_bytes(),
        )
    )
    session.flush()


def projection_of(session: Session, space: Space) -> Projection | None:
    """The stored projection ``space`` applies, or None when it has none.

    Raises:
        NotIndexed: the space names a projection that is not stored.
    """
    if space.projection_tag is None:
        return None
    record = session.get(ProjectionRecord, space.projection_tag)
    if record is None:
        raise NotIndexed(
            f"projection {space.projection_tag!r} is not stored: index again with --refit"
        )
    return _projection_from_bytes(record.data)


@functools.lru_cache(maxsize=4)
def _projection_from_bytes(data: bytes) -> Projection:
    return Projection.from_bytes(data)


def load_space_vectors(session: Session, space: Space) -> VectorSet:
    """Every current vector of ``space``, read from SQL: its stored projected rows, and the
    embeddings of vectors without one, projected here (see ``core.space_reader`` for the
    readers jobs use)."""
    projection = projection_of(session, space)
    read = projected.read_space(session, space.embedding_model_id, space.projection_tag, projection)
    return read.vectors


def project_queries(session: Session, space: Space, vectors: np.ndarray) -> np.ndarray:
    """Outside vectors (a search photo) into ``space``."""
    projection = projection_of(session, space)
    return vectors if projection is None else projection.apply(vectors)
