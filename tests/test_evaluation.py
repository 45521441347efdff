"""Precision@k, macro and micro, and AP@k on lists small enough to check by hand."""

from __future__ import annotations

import pytest

from core.evaluation import evaluate_lists


def test_micro_macro_and_map_by_hand() -> None:
    labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
    lists = {
        "a1": ["a2", "b1"],  # P@2 = 1/2, AP = (1/1) / min(2, 2) = 0.5
        "a2": ["a1", "a3"],  # 1, AP 1
        "a3": ["b1", "a1"],  # 1/2, AP = (1/2) / 2 = 0.25
        "b1": ["b2", "a1"],  # 1/2, AP = 1 / min(2, 1) = 1
        "b2": ["a1", "a2"],  # 0, AP 0
        "c1": ["a1", "b1"],  # 0, no AP (no other C)
        "unlabelled": ["a1", "a2"],
    }
    result = evaluate_lists("toy", lists, labels, "kind", k=2)
    assert result.queries == 6
    assert result.micro_precision == pytest.approx((0.5 + 1 + 0.5 + 0.5 + 0 + 0) / 6)
    assert result.macro_precision == pytest.approx(((0.5 + 1 + 0.5) / 3 + 0.25 + 0) / 3)
    assert result.mean_average_precision == pytest.approx((0.5 + 1 + 0.25 + 1 + 0) / 5)
    assert [(s.label, s.products) for s in result.per_label] == [("A", 3), ("B", 2), ("C", 1)]
