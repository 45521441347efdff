"""Large arrays of vector rows, recycled once nothing refers to them.

A set of vectors grown by an add, or shrunk by a delete, is a new array: 256 MB at a million
64-d rows, written once per add. Freeing one such array and allocating the next lets the kernel
hand out fresh pages every time, and on a virtual machine whose host takes freed memory back
(as this project's machines do) touching those pages costs 0.4-0.8 s instead of 25 ms: every
second add at a million products paid it (BENCHMARKS.md, 2026-12-07). So a process keeps the
few large arrays it wrote last and writes the next set into one that nothing holds any more
(no set, no view of it), with a little room to grow, so that adds keep using the same pages.

Where in its buffer a new array starts is chosen too. A grown set is its old rows copied one
row (256 bytes at 64-d) further on, and a copy whose destination is a little past its source
modulo 4 KiB runs at a third of its speed: the CPU takes each load for one of the stores just
issued to the same page offset ("4K aliasing"): 54 ms instead of 16 for 256 MB on an AMD EPYC
(BENCHMARKS.md, 2026-12-07, a fourth day). So each copy's destination is put about half a page
from its source.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# Below this, arrays come and go as numpy allocates them.
_RECYCLED_BYTES = 16 * 1024 * 1024
# Room for this share more rows, so that the next adds fit the same array.
_SLACK = 64
# Up to this many rows are inserted segment by segment (plain copies), more through a mask.
_SEGMENTS_MAX = 1024
# Page offsets: a copy's destination is kept about half a page from its source, and each
# array starts at a multiple of the cache line.
_PAGE = 4096
_LINE = 64


class RowBuffers:
    """The large arrays one process wrote sets into last (``kept`` of them at most)."""

    def __init__(self, kept: int = 3) -> None:
        self._kept = kept
        # First a probe never handed out: an array held as the kept ones are and by nothing
        # else, whose reference count is what a free one's reads (whatever the interpreter
        # counts for the loop and the call), so a kept array with a view or a set on it
        # (one more) is never written again.
        self._held: list[np.ndarray] = [np.empty(0)]
        self._lock = threading.Lock()

    def take(self, rows: int, width: int, dtype: np.dtype, offset: int = 0) -> np.ndarray:
        """An uninitialised (rows, width) array: in a free kept buffer when one fits. A kept
        one starts ``offset`` bytes into a page, rounded down to a cache line."""
        size = rows * width * dtype.itemsize
        if size < _RECYCLED_BYTES:
            return np.empty((rows, width), dtype)
        with self._lock:
            free = -1
            for buffer in self._held:
                count = sys.getrefcount(buffer)
                if free < 0:
                    free = count  # the probe
                elif count == free and size + _PAGE <= len(buffer):
                    return _placed(buffer, rows, width, dtype, offset)
            # Bytes, with room for more rows and for any start within a page.
            buffer = np.empty(size + size // _SLACK + _PAGE, np.uint8)
            self._held = [self._held[0], *[*self._held[1:], buffer][-self._kept :]]
            return _placed(buffer, rows, width, dtype, offset)


def _placed(buffer: np.ndarray, rows: int, width: int, dtype: np.dtype, offset: int) -> np.ndarray:
    start = (offset % _PAGE // _LINE * _LINE - buffer.ctypes.data) % _PAGE
    size = rows * width * dtype.itemsize
    return buffer[start : start + size].view(dtype).reshape(rows, width)


def _offset_for(base: np.ndarray, rows: int) -> int:
    """Where in a page to start an array whose segments are copied from ``base`` with their
    destinations 0 to ``rows`` rows further on (negative: back; at most the segments there
    are): the middle of that span half a page past the source."""
    rows = max(-_SEGMENTS_MAX, min(rows, _SEGMENTS_MAX))
    shifts = rows * int(base.shape[1]) * int(base.dtype.itemsize)
    return int(base.ctypes.data) + _PAGE // 2 - shifts // 2


_BUFFERS = RowBuffers()


def inserted(base: np.ndarray, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``numpy.insert(base, at, rows, axis=0)`` (``at`` ascending), written into a recycled
    array."""
    count = len(base) + len(rows)
    # The n-th segment lands n rows further on than its source.
    out = _BUFFERS.take(count, base.shape[1], base.dtype, _offset_for(base, len(rows)))
    placed = np.asarray(at, dtype=np.int64) + np.arange(len(rows))  # where numpy puts them
    if len(rows) > _SEGMENTS_MAX:
        between = np.ones(count, dtype=bool)
        between[placed] = False
        out[between] = base
        out[placed] = rows
        return out
    start = 0
    for n, pos in enumerate(placed.tolist()):
        out[start + n : pos] = base[start : pos - n]
        out[pos] = rows[n]
        start = pos - n
    out[start + len(rows) :] = base[start:]
    return out


def kept_rows(base: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``base[keep]`` (a boolean mask), written into a recycled array."""
    dropped = np.flatnonzero(~keep)
    # The n-th segment lands n rows before its source.
    offset = _offset_for(base, -len(dropped))
    out = _BUFFERS.take(len(base) - len(dropped), base.shape[1], base.dtype, offset)
    if len(dropped) > _SEGMENTS_MAX:
        # mode="clip": numpy buffers ``out`` (a copy of it all) in its default "raise" mode.
        np.take(base, np.flatnonzero(keep), axis=0, out=out, mode="clip")
        return out
    start = 0
    for n, pos in enumerate(dropped.tolist()):
        out[start - n : pos - n] = base[start:pos]
        start = pos + 1
    out[start - len(dropped) :] = base[start:]
    return out
