"""An add's one pass: the newcomers' lists equal top_k's, and each row's best score against
them is exact in float32, whatever the tiles, groups and ties."""

from __future__ import annotations

import numpy as np
import pytest

from core import newcomers
from core.encoder import l2_normalise
from core.neighbours import top_k


def _catalogue(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = l2_normalise(rng.normal(size=(700, 24)))
    # Near-duplicates beyond float32's resolution, and exact copies: ties at equal scores.
    centres = np.repeat(rng.normal(size=(10, 24)), 8, axis=0)
    close = l2_normalise(centres + rng.normal(scale=1e-7, size=centres.shape))
    return np.concatenate([spread, close, close[:5]]).astype(np.float32)


@pytest.mark.parametrize("tile", [7, 4096, 1 << 22])
@pytest.mark.parametrize("grouped", [False, True])
def test_newcomer_lists_equal_top_k(
    monkeypatch: pytest.MonkeyPatch, tile: int, grouped: bool
) -> None:
    monkeypatch.setattr(newcomers, "_TILE_VALUES", tile)
    monkeypatch.setattr(newcomers, "_SAMPLE", 5)
    vectors = _catalogue(3)
    groups = np.arange(len(vectors)) % 3 if grouped else None
    new = np.array([0, 5, 701, 702, 750, 781, len(vectors) - 1])
    found = newcomers.scan(vectors, new, 10, groups)
    lists = newcomers.newcomer_lists(vectors, found, 10, groups)
    expected = top_k(vectors, 10, queries=new, groups=groups)
    np.testing.assert_array_equal(lists.positions, expected.positions)
    np.testing.assert_array_equal(lists.scores, expected.scores)

    scores = vectors @ vectors[new].T
    if groups is not None:
        scores[groups[:, None] != groups[new][None, :]] = -np.inf
    scores[new, np.arange(len(new))] = -np.inf
    np.testing.assert_allclose(found.best, scores.max(axis=1), rtol=0, atol=1e-6)


def test_a_catalogue_smaller_than_a_list() -> None:
    vectors = _catalogue(4)[:6]
    found = newcomers.scan(vectors, np.array([2, 4]), 10)
    lists = newcomers.newcomer_lists(vectors, found, 10)
    expected = top_k(vectors, 10, queries=np.array([2, 4]))
    np.testing.assert_array_equal(lists.positions, expected.positions)
    np.testing.assert_array_equal(lists.scores, expected.scores)
