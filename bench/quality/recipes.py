"""Feature recipes over pooled VGG16 features, and neighbour lists with optional re-ranking.

Everything learned here (PCA, whitening, the neighbour graph) is fitted on the catalogue's own
vectors; labels only ever score the lists afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from sklearn.decomposition import PCA

from core.encoder import l2_normalise
from core.neighbours import top_k

MAX_PCA = 256
POOL_NAMES = {"avg": "avg", "max": "max", "gem": "GeM3", "rmac": "R-MAC", "crow": "CroW"}


@dataclass(frozen=True)
class Part:
    """One pooled layer: element-wise power, then L2; several views are summed, then L2."""

    layer: str  # b3, b4, b5
    pool: str  # avg, max, gem, rmac, crow
    power: float = 1.0
    views: tuple[str, ...] = ("p224",)

    def label(self, with_views: bool = True) -> str:
        pool = POOL_NAMES[self.pool]
        if self.power == 0.5:
            pool = f"sqrt-{pool}"
        elif self.power != 1.0:
            pool = f"{pool}^{self.power:g}"
        text = f"{self.layer} {pool}"
        return f"{text} @{'+'.join(self.views)}" if with_views else text


@dataclass(frozen=True)
class Rerank:
    """Re-ranking from the neighbour graph.

    ``aqe``: each query becomes the similarity^alpha-weighted sum of itself and its n-1
    nearest, and is compared with the original vectors. ``dba``: every vector is replaced that
    way and the lists are computed among the replaced vectors (what storing expanded vectors
    would give). ``diffusion``: Iscen et al. 2017 on the mutual k-NN graph (weights
    similarity^3), ranking by (I - alpha·S)^-1 y.
    """

    kind: Literal["aqe", "dba", "diffusion"]
    n: int
    alpha: float

    def label(self) -> str:
        if self.kind == "diffusion":
            return f"diffusion k={self.n} alpha={self.alpha:g}"
        return f"{self.kind.upper()} n={self.n} alpha={self.alpha:g}"


@dataclass(frozen=True)
class Recipe:
    parts: tuple[Part, ...]
    pca: int | None = None  # PCA dimensions (centred); None: plain L2 of the concatenation
    whiten: float = 1.0  # component j divided by eigenvalue_j^(whiten/2); 1 is full whitening
    power: float = 1.0  # signed power after PCA, then L2
    rerank: Rerank | None = None
    note: str = field(default="", compare=False)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(view for part in self.parts for view in part.views))

    def label(self) -> str:
        views = self.views
        shared = len({part.views for part in self.parts}) == 1
        text = " + ".join(part.label(with_views=not shared) for part in self.parts)
        if shared:
            text += f" @{'+'.join(views)}"
        if self.pca:
            text += f" | PCA{self.pca}"
            text += " whiten" if self.whiten == 1.0 else f" whiten^{self.whiten:g}"
            if self.power != 1.0:
                text += f" pow{self.power:g}"
        if self.rerank:
            text += f" | {self.rerank.label()}"
        return text

    def without_rerank(self) -> Recipe:
        return replace(self, rerank=None)


Store = Mapping[str, Mapping[str, np.ndarray]]  # view -> "b4.gem" -> (N, c)


def part_vectors(part: Part, store: Store) -> np.ndarray:
    total: np.ndarray | float = 0.0
    for view in part.views:
        x = np.asarray(store[view][f"{part.layer}.{part.pool}"], dtype=np.float64)
        if part.power != 1.0:
            x = np.power(np.maximum(x, 0.0), part.power)  # pooled ReLU maps are non-negative
        total = total + l2_normalise(x)
    return l2_normalise(np.asarray(total))


def signed_power(x: np.ndarray, power: float) -> np.ndarray:
    return x if power == 1.0 else np.sign(x) * np.power(np.abs(x), power)


PcaCache = dict[tuple[tuple[Part, ...], bytes], PCA]


def concatenated(parts: tuple[Part, ...], store: Store) -> np.ndarray:
    """Each part L2-normalised, concatenated, and L2-normalised again (float64)."""
    x = np.concatenate([part_vectors(part, store) for part in parts], axis=1)
    return np.asarray(l2_normalise(x), dtype=np.float64)


def recipe_vectors(
    recipe: Recipe,
    store: Store,
    fit_rows: np.ndarray | None = None,
    cache: PcaCache | None = None,
) -> np.ndarray:
    """Unit vectors of a recipe (re-ranking aside); PCA is fitted on ``fit_rows`` (default all).

    PCA keeps the leading ``recipe.pca`` components of one fit with up to 256 (components
    are nested, so this equals fitting with ``recipe.pca``), each divided by its eigenvalue to
    the power ``whiten / 2``: ``whiten=1`` is exactly ``PCA(whiten=True)``. Fits are reused
    through ``cache`` (one per store).
    """
    x = concatenated(recipe.parts, store)
    if not recipe.pca:
        return l2_normalise(x)
    rows = np.arange(len(x)) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
    key = (recipe.parts, rows.tobytes())
    pca = None if cache is None else cache.get(key)
    if pca is None:
        dims = min(MAX_PCA, x.shape[1], len(rows) - 1)
        pca = PCA(n_components=dims, svd_solver="covariance_eigh").fit(x[rows])
        if cache is not None:
            cache[key] = pca
    dims = min(recipe.pca, pca.n_components_)
    z = (x - pca.mean_) @ pca.components_[:dims].T
    z = z / np.power(np.maximum(pca.explained_variance_[:dims], 1e-12), recipe.whiten / 2)
    return l2_normalise(signed_power(z, recipe.power))


def _dense_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns of each row, never the row's own, ties towards the smaller position."""
    scores = np.array(scores, dtype=np.float64)
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def expand(vectors: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """alpha-weighted query expansion: each vector and its n-1 nearest, weights sim^alpha."""
    x = vectors.astype(np.float64)
    if n <= 1:
        return vectors
    near = top_k(vectors, n - 1).positions
    sims = np.einsum("id,ikd->ik", x, x[near])
    weights = np.power(np.maximum(sims, 0.0), alpha)
    return l2_normalise(x + np.einsum("ik,ikd->id", weights, x[near]))


def diffusion_scores(vectors: np.ndarray, k: int, alpha: float, gamma: float = 3.0) -> np.ndarray:
    """Diffusion on the mutual k-NN graph (dense solve: fine for a few thousand products)."""
    x = vectors.astype(np.float64)
    n = len(x)
    sims = np.maximum(x @ x.T, 0.0)
    near = top_k(vectors, k).positions
    knn = np.zeros((n, n))
    rows = np.repeat(np.arange(n), k)
    knn[rows, near.ravel()] = np.power(sims[rows, near.ravel()], gamma)
    mutual = np.minimum(knn, knn.T)
    degree = mutual.sum(axis=1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    graph = mutual * scale[:, None] * scale[None, :]
    system = np.eye(n) - alpha * graph
    queries = knn + np.eye(n)  # each product's own k-NN as the query's seed
    return np.asarray(np.linalg.solve(system, queries.T).T)


def neighbour_positions(vectors: np.ndarray, k: int, rerank: Rerank | None) -> np.ndarray:
    """(N, k) neighbour positions of every product among the others."""
    if rerank is None:
        return top_k(vectors, k).positions
    if rerank.kind == "dba":
        return top_k(expand(vectors, rerank.n, rerank.alpha), k).positions
    if rerank.kind == "aqe":
        queries = expand(vectors, rerank.n, rerank.alpha)
        return _dense_top_k(queries.astype(np.float64) @ vectors.astype(np.float64).T, k)
    return _dense_top_k(diffusion_scores(vectors, rerank.n, rerank.alpha), k)


def as_lists(positions: np.ndarray, ids: Sequence[str]) -> dict[str, list[str]]:
    return {
        pid: [ids[pos] for pos in row if pos >= 0] for pid, row in zip(ids, positions, strict=True)
    }
