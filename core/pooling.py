"""Global pooling of convolutional feature maps (n, h, w, c) into one vector per image.

avg, max and generalised mean (GeM) pool every position alike; R-MAC max-pools a grid of
overlapping regions and sums their L2-normalised results (Tolias et al. 2016); CroW weights
positions by their total activation and channels by how rarely they fire (Kalantidis et al.
2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))


def region_boxes(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC regions: the whole map, then square regions of side 2·min/(l+1) on an l-by-l grid
    (about 40% overlap) for l = 1..levels. Returns (top, left, height, width) boxes."""
    side = min(height, width)
    steps = np.arange(2, 7)
    gap = (max(height, width) - side) / (steps - 1)
    extra = int(np.argmin(np.abs((side**2 - side * gap) / side**2 - 0.4))) + 1
    extra_w = extra if width > height else 0
    extra_h = extra if height > width else 0
    boxes = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        size = math.floor(2 * side / (level + 1))
        if size < 1:
            break
        half = math.floor(size / 2 - 1)
        step_w = (width - size) / (level + extra_w - 1) if level + extra_w > 1 else 0.0
        step_h = (height - size) / (level + extra_h - 1) if level + extra_h > 1 else 0.0
        lefts = np.floor(half + np.arange(level + extra_w) * step_w) - half
        tops = np.floor(half + np.arange(level + extra_h) * step_h) - half
        boxes.extend((int(t), int(left), size, size) for t in tops for left in lefts)
    return boxes


def avg(maps: np.ndarray) -> np.ndarray:
    return np.asarray(maps.mean(axis=(1, 2)))


def max_(maps: np.ndarray) -> np.ndarray:
    return np.asarray(maps.max(axis=(1, 2)))


def gem(maps: np.ndarray, power: float = 3.0) -> np.ndarray:
    clipped = np.maximum(maps, 1e-6)
    if power == int(power) and 1 <= power <= 4:
        # Repeated products are several times faster than np.power with a float exponent.
        raised = clipped
        for _ in range(int(power) - 1):
            raised = raised * clipped
    else:
        raised = np.power(clipped, power)
    return np.asarray(np.power(raised.mean(axis=(1, 2)), 1.0 / power))


def rmac(maps: np.ndarray) -> np.ndarray:
    n, height, width, channels = maps.shape
    total = np.zeros((n, channels), dtype=np.float32)
    for top, left, h, w in region_boxes(height, width):
        total += _unit_rows(maps[:, top : top + h, left : left + w, :].max(axis=(1, 2)))
    return total


def crow(maps: np.ndarray) -> np.ndarray:
    spatial = maps.sum(axis=3)
    spatial = spatial / np.maximum(np.sqrt((spatial**2).sum(axis=(1, 2), keepdims=True)), 1e-12)
    weighted = (maps * np.sqrt(spatial)[..., None]).sum(axis=(1, 2))
    fired = (maps > 0).mean(axis=(1, 2))
    return np.asarray(weighted * np.log(fired.sum(axis=1, keepdims=True) / (fired + 1e-6)))


def pooling_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """``avg``, ``max``, ``gem<p>`` (e.g. gem3), ``rmac`` or ``crow``."""
    if name == "avg":
        return avg
    if name == "max":
        return max_
    if name.startswith("gem"):
        power = float(name[3:] or 3)
        return lambda maps: gem(maps, power)
    if name == "rmac":
        return rmac
    if name == "crow":
        return crow
    raise ValueError(f"unknown pooling {name!r}: use avg, max, gem<p>, rmac or crow")
