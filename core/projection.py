"""Post-processing learned from the catalogue itself, without labels: the directions in which
a photo's source moves its vector removed (``core.nuisance``), PCA whitening with dimension
reduction, then signed power normalisation and L2.

A fitted projection is stored with the index and is part of the model id of every list built
with it. It is re-fitted only by a rebuild (``lookalike index --refit``, or the one an add queues
once the catalogue has grown well past what it was fitted on: ``core.refits``), so incremental
adds in between project newcomers with the very same parameters and stay exact.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.encoder import l2_normalise


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (dims, d), rows scaled by variance^(-whiten/2)
    power: float
    whiten: float = 1.0
    # (d, r) orthonormal columns projected out of every vector before the PCA; None: nothing.
    nuisance: np.ndarray | None = None

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def tag(self) -> str:
        """Short, content-derived name: part of the model id of lists built with it."""
        digest = hashlib.sha256(self.to_bytes()).hexdigest()[:10]
        removed = "" if self.nuisance is None else f"-n{self.nuisance.shape[1]}"
        return f"pca{self.dims}-w{self.whiten:g}-p{self.power:g}{removed}-{digest}"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project, power and L2-normalise, a chunk of rows at a time (float64 inside)."""
        out = np.empty((len(vectors), self.dims), dtype=np.float32)
        for start in range(0, len(vectors), _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            centred = _rows(vectors, start, self.nuisance) - self.mean
            projected = centred @ self.components.T
            out[rows] = l2_normalise(np.sign(projected) * np.abs(projected) ** self.power)
        return out

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        # Without a nuisance basis the bytes, and so the tags, are those of earlier versions.
        arrays: dict[str, Any] = {
            "mean": self.mean,
            "components": self.components,
            "power": self.power,
            "whiten": self.whiten,
        }
        if self.nuisance is not None:
            arrays["nuisance"] = self.nuisance
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(
                arrays["mean"],
                arrays["components"],
                float(arrays["power"]),
                float(arrays["whiten"]),
                arrays["nuisance"] if "nuisance" in arrays.files else None,
            )


def remove(vectors: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """``vectors`` less their components along the orthonormal columns of ``basis``."""
    if basis is None:
        return vectors
    return np.asarray(vectors - (vectors @ basis) @ basis.T)


class Covariance:
    """Mean and covariance of rows fed a chunk at a time (Chan et al.'s pairwise update, in
    float64): memory O(d^2) whatever the number of rows, so a catalogue's vectors never need to
    be held at once. With ``nuisance``, those directions are removed from each row first."""

    def __init__(self, nuisance: np.ndarray | None = None) -> None:
        self.nuisance = nuisance
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), _CHUNK_ROWS):
            chunk = _rows(rows, start, self.nuisance)
            mean = chunk.mean(axis=0)
            centred = chunk - mean
            scatter = centred.T @ centred
            if self.mean is None or self.scatter is None:
                self.count, self.mean, self.scatter = len(chunk), mean, scatter
                continue
            total = self.count + len(chunk)
            delta = mean - self.mean
            self.scatter += scatter + np.outer(delta, delta) * (self.count * len(chunk) / total)
            self.mean = self.mean + delta * (len(chunk) / total)
            self.count = total

    def covariance(self) -> np.ndarray:
        if self.scatter is None:
            raise ValueError("no rows to fit a projection on")
        return np.asarray(self.scatter / max(self.count - 1, 1))


def fit_projection(
    vectors: np.ndarray | Iterable[np.ndarray],
    dims: int,
    power: float,
    whiten: float = 1.0,
    eps: float = 1e-12,
    nuisance: np.ndarray | None = None,
) -> Projection:
    """PCA of the catalogue's own vectors keeping ``dims`` dimensions, each divided by its
    variance to the power ``whiten / 2`` (1: full whitening). With ``nuisance`` (orthonormal
    columns), those directions are removed from every vector first, here and in ``apply``.

    ``vectors`` is an array or chunks of rows (read from SQL one after another): the
    covariance (d x d) is accumulated in float64 and eigendecomposed, so memory stays O(d^2)
    whatever the catalogue size. Deterministic for the same vectors in the same chunks (signs
    fixed by the largest loading).
    """
    accumulated = Covariance(nuisance)
    for chunk in [vectors] if isinstance(vectors, np.ndarray) else vectors:
        accumulated.add(chunk)
    covariance = accumulated.covariance()
    assert accumulated.mean is not None
    variance, basis = np.linalg.eigh(covariance)  # ascending
    dims = min(dims, covariance.shape[0], accumulated.count)
    order = np.argsort(variance)[::-1][:dims]
    vt = basis[:, order].T
    signs = np.sign(vt[np.arange(dims), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    scale = np.power(np.maximum(variance[order], eps), -whiten / 2)
    return Projection(accumulated.mean, vt * scale[:, None], power, whiten, nuisance)


def _rows(vectors: np.ndarray, start: int, nuisance: np.ndarray | None) -> np.ndarray:
    return remove(np.asarray(vectors[start : start + _CHUNK_ROWS], dtype=np.float64), nuisance)


_CHUNK_ROWS = 8192
