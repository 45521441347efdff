"""One VGG16 trunk pass per input view, every feature layer pooled every way, cached on disk.

A *view* is how a photo becomes a model input (size, stretch or pad-to-square on white, a
mirror image, a 60x80 thumbnail first). Each batch's block3/4/5 feature maps are pooled at once
(average, max, generalised mean, R-MAC regions, CroW weighting), so full maps are never kept for
the whole catalogue. Labels play no part here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from core import pooling
from core.encoder import load_bundled_weights
from core.images import load_rgb
from core.model_spec import resolve_spec
from core.settings import get_settings

LAYERS = {"b3": "block3_conv3", "b4": "block4_conv3", "b5": "block5_conv3"}
POOLS = ("avg", "max", "gem", "rmac", "crow")
GEM_POWER = 3.0
MAX_PIXELS = 50_000_000
THUMBNAIL = (60, 80)  # the size of the fashion-small photos

ResizeMode = Literal["stretch", "pad"]


@dataclass(frozen=True)
class View:
    """How a photo is turned into a square model input."""

    name: str
    size: int
    mode: ResizeMode
    flip: bool = False
    thumbnail: bool = False  # shrink to 60x80 first, as fashion-small's photos are
    grey: bool = False  # colour removed (3 equal channels)
    trim: bool = False  # white margins cut away first (the product's bounding box)

    def describe(self) -> str:
        text = f"{self.size} {'pad-to-square on white' if self.mode == 'pad' else 'stretch'}"
        if self.flip:
            text += ", mirrored"
        if self.thumbnail:
            text += ", from a 60x80 thumbnail"
        if self.grey:
            text += ", greyscale"
        if self.trim:
            text = "white margins trimmed, then " + text
        return text


VIEWS = {
    view.name: view
    for view in (
        View("s224", 224, "stretch"),
        View("p224", 224, "pad"),
        View("g224", 224, "stretch", grey=True),
        View("s160", 160, "stretch"),
        View("p160", 160, "pad"),
        View("g160", 160, "stretch", grey=True),
        View("s128", 128, "stretch"),
        View("g128", 128, "stretch", grey=True),
        View("g128f", 128, "stretch", flip=True, grey=True),
        View("a128", 128, "pad", trim=True),
        View("s112", 112, "stretch"),
        View("p112", 112, "pad"),
        View("g112", 112, "stretch", grey=True),
        View("t112", 112, "stretch", thumbnail=True),
        View("tg112", 112, "stretch", thumbnail=True, grey=True),
        View("s96", 96, "stretch"),
        # Measured once and left out of the default run (slow, and never better):
        View("p288", 288, "pad"),
        View("s224f", 224, "stretch", flip=True),
        View("ag128", 128, "pad", grey=True, trim=True),
        View("as128", 128, "stretch", trim=True),
    )
}
DEFAULT_VIEWS = tuple(VIEWS)[:16]


def trim_margins(img: Image.Image, threshold: int = 240, margin: float = 0.02) -> Image.Image:
    """The photo cut to the box around its non-white pixels, plus a small white margin."""
    dark = np.asarray(img.convert("L")) < threshold
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    if len(rows) < 2 or len(cols) < 2:
        return img
    pad = round(margin * max(img.size))
    box = (
        max(int(cols[0]) - pad, 0),
        max(int(rows[0]) - pad, 0),
        min(int(cols[-1]) + 1 + pad, img.width),
        min(int(rows[-1]) + 1 + pad, img.height),
    )
    return img.crop(box)


def square_image(img: Image.Image, view: View) -> Image.Image:
    """The view's square input image (RGB, ``view.size`` pixels a side), bilinear resizing."""
    if view.thumbnail:
        img = img.resize(THUMBNAIL, Image.Resampling.BILINEAR)
    if view.trim:
        img = trim_margins(img)
    if view.mode == "pad":
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    if img.size != (view.size, view.size):
        img = img.resize((view.size, view.size), Image.Resampling.BILINEAR)
    if view.flip:
        img = ImageOps.mirror(img)
    if view.grey:
        img = img.convert("L").convert("RGB")
    return img


def model_input(path: Path, view: View) -> np.ndarray:
    """Decoded, resized and Caffe-preprocessed (BGR, ImageNet mean removed) float32 pixels."""
    from keras.applications import vgg16

    pixels = np.asarray(square_image(load_rgb(path, MAX_PIXELS), view), dtype=np.float32)
    return np.asarray(vgg16.preprocess_input(pixels), dtype=np.float32)


def weights_tag() -> str:
    return resolve_spec(get_settings(weights="bundled")).weights_tag


def build_trunk() -> Any:
    """Keras VGG16 with the bundled offline weights, returning block3/4/5 conv3 maps."""
    import keras
    from keras.applications import vgg16

    spec = resolve_spec(get_settings(weights="bundled"))
    assert spec.weights_path is not None
    base = vgg16.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    load_bundled_weights(base, spec.weights_path)
    outputs = [base.get_layer(name).output for name in LAYERS.values()]
    return keras.Model(base.input, outputs, name="vgg16_trunk")


def pool_maps(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Every global pooling of a batch of non-negative feature maps (n, h, w, c), with the
    functions the encoder itself uses (core.pooling)."""
    maps = np.asarray(maps, dtype=np.float32)
    return {
        "avg": pooling.avg(maps),
        "max": pooling.max_(maps),
        "gem": pooling.gem(maps, GEM_POWER),
        "rmac": pooling.rmac(maps),
        "crow": pooling.crow(maps).astype(np.float32),
    }


@dataclass
class ViewFeatures:
    """Pooled features of one view: ``pooled["b4.gem"]`` is (N, channels), rows as ``ids``."""

    view: View
    ids: list[str]
    pooled: dict[str, np.ndarray]
    trunk_seconds: float  # model calls only
    total_seconds: float  # decoding, model and all the pooling
    from_cache: bool = False  # timings then come from the run that computed the features

    @property
    def trunk_images_per_second(self) -> float:
        return len(self.ids) / self.trunk_seconds


def _batches(
    paths: Sequence[Path], view: View, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    with ThreadPoolExecutor(workers) as pool:
        prepared = pool.map(lambda path: model_input(path, view), paths)
        batch: list[np.ndarray] = []
        for array in prepared:
            batch.append(array)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def extract(
    trunk: Any,
    view: View,
    ids: Sequence[str],
    paths: Sequence[Path],
    batch_size: int = 16,
    workers: int = 2,
) -> ViewFeatures:
    """Run the trunk once over every photo in one view and pool each batch right away."""
    chunks: dict[str, list[np.ndarray]] = {}
    trunk_seconds = 0.0
    start = time.perf_counter()
    warm = np.zeros((1, view.size, view.size, 3), dtype=np.float32)
    trunk.predict_on_batch(warm)  # graph tracing is not part of the throughput
    for batch in _batches(paths, view, batch_size, workers):
        model_start = time.perf_counter()
        maps = trunk.predict_on_batch(batch)
        trunk_seconds += time.perf_counter() - model_start
        for short, layer_maps in zip(LAYERS, maps, strict=True):
            for pool, values in pool_maps(np.asarray(layer_maps)).items():
                chunks.setdefault(f"{short}.{pool}", []).append(values)
    return ViewFeatures(
        view=view,
        ids=list(ids),
        pooled={key: np.concatenate(parts) for key, parts in chunks.items()},
        trunk_seconds=trunk_seconds,
        total_seconds=time.perf_counter() - start,
    )


def cached_features(
    cache: Path,
    view: View,
    ids: Sequence[str],
    paths: Sequence[Path],
    trunk: Callable[[], Any],
    log: Callable[[str], None] = print,
) -> ViewFeatures:
    """Pooled features of a view from ``cache`` when there for the same photos and weights."""
    listed = hashlib.sha256("\n".join([repr(view), *ids]).encode()).hexdigest()[:10]
    digest = f"{len(ids)}-{listed}-{weights_tag()}"
    path = cache / f"features-{view.name}-{digest}.npz"
    if path.is_file():
        with np.load(path) as stored:
            if list(stored["ids"]) == list(ids):
                pooled = {key[7:]: stored[key] for key in stored.files if key.startswith("pooled:")}
                return ViewFeatures(
                    view,
                    list(ids),
                    pooled,
                    float(stored["trunk_seconds"]),
                    float(stored["total_seconds"]),
                    from_cache=True,
                )
    log(f"  trunk pass {view.name} ({view.describe()}) over {len(ids)} photos ...")
    features = extract(trunk(), view, ids, paths)
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {f"pooled:{key}": value for key, value in features.pooled.items()}
    arrays["ids"] = np.asarray(ids)
    arrays["trunk_seconds"] = np.asarray(features.trunk_seconds)
    arrays["total_seconds"] = np.asarray(features.total_seconds)
    np.savez(path, allow_pickle=False, **arrays)
    log(
        f"    {features.trunk_images_per_second:.1f} images/s trunk only, "
        f"{len(ids) / features.total_seconds:.1f} images/s with decoding and pooling"
    )
    return features
