"""PCA whitening learned from the catalogue (core/projection.py)."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from core.encoder import l2_normalise
from core.projection import Projection, fit_projection


def _catalogue(count: int = 3000, d: int = 48) -> np.ndarray:
    rng = np.random.default_rng(7)
    scales = np.geomspace(5.0, 0.05, d)  # distinct variances: components are well defined
    return l2_normalise(rng.normal(size=(count, d)) * scales + 0.3)


def test_full_whitening_equals_scikit_learn_pca() -> None:
    vectors = _catalogue()
    projection = fit_projection(vectors, dims=8, power=1.0, whiten=1.0)
    reference = PCA(n_components=8, whiten=True, svd_solver="full").fit(vectors.astype(float))
    ours = (vectors - projection.mean) @ projection.components.T
    theirs = reference.transform(vectors.astype(float))
    signs = np.sign((ours * theirs).sum(axis=0))  # PCA signs are arbitrary
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-6)
    np.testing.assert_allclose(projection.apply(vectors), l2_normalise(theirs * signs), atol=1e-5)


def test_half_whitening_scales_by_the_fourth_root_of_variance() -> None:
    vectors = _catalogue()
    full = fit_projection(vectors, dims=6, power=1.0, whiten=1.0)
    half = fit_projection(vectors, dims=6, power=1.0, whiten=0.5)
    variance = (full.components @ np.cov(vectors.T) @ full.components.T).diagonal()
    np.testing.assert_allclose(variance, 1.0, rtol=1e-6)  # full whitening: unit variance
    ratio = np.linalg.norm(half.components, axis=1) / np.linalg.norm(full.components, axis=1)
    spread = (half.components @ np.cov(vectors.T) @ half.components.T).diagonal()
    np.testing.assert_allclose(ratio**2, spread, rtol=1e-5)  # variance^(1/2) after half


def test_projection_round_trips_and_its_tag_follows_the_content() -> None:
    vectors = _catalogue()
    projection = fit_projection(vectors, dims=8, power=0.5, whiten=1.0)
    again = Projection.from_bytes(projection.to_bytes())
    np.testing.assert_array_equal(again.apply(vectors[:50]), projection.apply(vectors[:50]))
    assert again.tag == projection.tag == fit_projection(vectors, 8, 0.5, 1.0).tag
    assert fit_projection(vectors[:-1], 8, 0.5, 1.0).tag != projection.tag
    assert projection.tag.startswith("pca8-w1-p0.5-")


def test_chunked_projection_equals_one_pass() -> None:
    vectors = np.tile(_catalogue(), (4, 1))  # more rows than one chunk
    projection = fit_projection(vectors, dims=8, power=1.0)
    whole = (vectors.astype(np.float64) - projection.mean) @ projection.components.T
    np.testing.assert_allclose(projection.apply(vectors), l2_normalise(whole), atol=1e-6)
