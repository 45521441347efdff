"""Large row arrays are recycled only when nothing holds them, and written exactly as numpy's
insert and boolean indexing write them."""

from __future__ import annotations

import numpy as np
import pytest

from core import row_buffers
from core.row_buffers import RowBuffers


@pytest.mark.parametrize("segments", [1024, 2])
def test_inserted_and_kept_rows_equal_numpy(monkeypatch: pytest.MonkeyPatch, segments: int) -> None:
    monkeypatch.setattr(row_buffers, "_RECYCLED_BYTES", 0)  # recycle even these small arrays
    monkeypatch.setattr(row_buffers, "_SEGMENTS_MAX", segments)
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 4)).astype(np.float32)
    for at in ([0], [50], [3, 3, 17, 50], [0, 0, 49], list(range(0, 50, 5))):
        rows = rng.normal(size=(len(at), 4)).astype(np.float32)
        expected = np.insert(base, at, rows, axis=0)
        np.testing.assert_array_equal(row_buffers.inserted(base, np.array(at), rows), expected)
    for drop in ([0], [49], [3, 4, 17], list(range(0, 50, 3)), []):
        keep = np.ones(50, dtype=bool)
        keep[drop] = False
        np.testing.assert_array_equal(row_buffers.kept_rows(base, keep), base[keep])


def test_an_array_is_written_again_only_when_nothing_holds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(row_buffers, "_RECYCLED_BYTES", 0)
    buffers = RowBuffers(kept=2)
    dtype = np.dtype(np.float32)
    first = buffers.take(100, 8, dtype)
    first[:] = 1.0
    view = first[10:20]
    del first
    second = buffers.take(100, 8, dtype)  # a view of the first is alive: a new array
    second[:] = 2.0
    assert (view == 1.0).all()
    del view
    third = buffers.take(101, 8, dtype)  # the first is free again, with room for one more row
    third[:] = 3.0
    assert (second == 2.0).all()
    assert third.base is not None and third.base is not second.base
    assert buffers.take(50, 8, dtype).base is not third.base  # still held: not reused


def test_a_grown_or_shrunk_array_starts_half_a_page_from_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A copy one row past its source modulo 4 KiB runs at a third of its speed (4K
    aliasing), so a recycled array is placed about half a page from the rows it copies."""
    monkeypatch.setattr(row_buffers, "_RECYCLED_BYTES", 0)
    base = np.arange(1000 * 64, dtype=np.float32).reshape(1000, 64)
    for made in (
        row_buffers.inserted(base, np.array([0]), base[:1]),
        row_buffers.kept_rows(base, np.arange(1000) != 0),
    ):
        gap = (made.ctypes.data - base.ctypes.data) % row_buffers._PAGE
        assert 1024 <= gap <= 3072
        assert made.ctypes.data % row_buffers._LINE == 0
