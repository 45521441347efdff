"""Decoding: every mode to RGB, orientation applied, every kind of bad file refused clearly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidImage
from core.images import check_image, load_pixels, load_rgb

LIMIT = 50_000_000


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_transparent_pixels_are_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    rgb = load_rgb(_encode(img, "PNG"), LIMIT)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency_and_greyscale_alpha() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    pal.info["transparency"] = 1
    pal.putpixel((1, 0), 1)
    rgb = load_rgb(_encode(pal, "PNG", transparency=1), LIMIT)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)
    la = load_rgb(_encode(Image.new("LA", (2, 2), (0, 0)), "PNG"), LIMIT)
    assert la.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = Image.new("RGB", (8, 6), (200, 30, 30)).convert(mode)
    rgb = load_rgb(_encode(img, fmt), LIMIT)
    assert rgb.mode == "RGB" and rgb.size == (8, 6)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (3, 1))
    for x, value in enumerate([0, 32768, 65535]):
        img.putpixel((x, 0), value)
    rgb = np.asarray(load_rgb(_encode(img, "PNG"), LIMIT))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 10, 10))  # black square top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    rgb = load_rgb(_encode(img, "JPEG", exif=exif.tobytes(), quality=95), LIMIT)
    assert rgb.size == (20, 40)
    assert np.asarray(rgb)[2, 17].mean() < 60  # now top-right


def test_load_pixels_resizes_to_model_input() -> None:
    pixels = load_pixels(_encode(Image.new("RGB", (60, 80), "red"), "PNG"), (224, 224), LIMIT)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of bad photo, with a phrase its error message must contain."""
    photo = _encode(Image.new("RGB", (64, 64), "blue"), "JPEG")
    files = {
        "text.jpg": (b"this is not an image\n", "not an image"),
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (photo[: len(photo) // 2], "truncated"),
        "huge.png": (_encode(Image.new("L", (6000, 5000)), "PNG"), "over the limit"),
    }
    paths = {}
    for name, (content, phrase) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        paths[name] = (path, phrase)
    return paths


def test_every_kind_of_bad_file_gets_a_clear_error(tmp_path: Path) -> None:
    for path, phrase in bad_files(tmp_path).values():
        with pytest.raises(InvalidImage, match=phrase):
            load_rgb(path, max_pixels=20_000_000)


def test_check_image_identifies_without_decoding(tmp_path: Path) -> None:
    assert check_image(_encode(Image.new("RGB", (5, 7)), "PNG"), LIMIT) == ("PNG", 5, 7)
    with pytest.raises(InvalidImage, match="over the limit"):
        check_image(_encode(Image.new("L", (6000, 5000)), "PNG"), 20_000_000)
    with pytest.raises(InvalidImage, match="not an image"):
        check_image(b"plain text", LIMIT)
