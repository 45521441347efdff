"""Decoding product photos into clean RGB pixels, with a clear error for every bad file."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidImage

ImageSource = str | os.PathLike[str] | bytes | BinaryIO

_WHITE = (255, 255, 255)


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise InvalidImage("empty file (0 bytes)")
        return Image.open(io.BytesIO(source))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise InvalidImage(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise InvalidImage("empty file (0 bytes)")
        return Image.open(path)
    return Image.open(source)


def check_image(source: ImageSource, max_pixels: int) -> tuple[str, int, int]:
    """Identify an image without decoding its pixels.

    Returns:
        The format name, width and height.

    Raises:
        InvalidImage: not an image Pillow knows, or larger than ``max_pixels``.
    """
    with _pillow_errors(max_pixels), _open(source) as img:
        width, height = img.size
        fmt = img.format or "unknown"
    _check_pixels(width, height, max_pixels)
    return fmt, width, height


def verify_image(source: ImageSource, max_pixels: int) -> tuple[str, int, int]:
    """Decode an image whole (its first frame), after checking its size from the header, so
    a decompression bomb is refused before any pixel is decoded.

    Returns:
        The format name, width and height.

    Raises:
        InvalidImage: not an image Pillow knows, larger than ``max_pixels``, truncated or
            corrupt anywhere in its pixel data.
    """
    with _pillow_errors(max_pixels), _open(source) as img:
        width, height = img.size
        fmt = img.format or "unknown"
        _check_pixels(width, height, max_pixels)
        img.load()
    return fmt, width, height


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {max_pixels:,} (possible decompression bomb)"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Wide greyscale: scale the value range to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode in ("I", "F"):
            arr = arr - min(float(arr.min()), 0.0)
        grey = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_rgb(
    source: ImageSource, max_pixels: int, at_least: tuple[int, int] | None = None
) -> Image.Image:
    """Decode a photo: EXIF orientation applied, converted to RGB.

    Args:
        at_least: let a JPEG decode at a reduced scale (1/2, 1/4, 1/8) that still gives at
            least this many pixels a side: several times cheaper for small model inputs.

    Raises:
        InvalidImage: empty, not an image, truncated, corrupt, or over ``max_pixels``.
    """
    with _pillow_errors(max_pixels):
        img = _open(source)
        _check_pixels(img.width, img.height, max_pixels)
        if at_least is not None and img.format == "JPEG":
            img.draft("RGB", at_least)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


@contextmanager
def _pillow_errors(max_pixels: int) -> Iterator[None]:
    """Pillow's many exceptions, as one InvalidImage with a message a person understands."""
    try:
        # Pillow's bomb warning uses a process-wide limit; ours is per call and always raises.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own ceiling (twice Image.MAX_IMAGE_PIXELS) stops a bomb before our check
        # does: quote the configured limit, or Pillow's where that is lower.
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        size = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(size[1]):,} pixels" if size else "too many pixels"
        raise InvalidImage(
            f"image is {pixels}, over the limit of {limit:,} (possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage("not an image Pillow can identify") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise InvalidImage(f"truncated image: {text}") from None
        raise InvalidImage(f"corrupt image: {text}") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"corrupt image: {exc}") from None


def load_pixels(
    source: ImageSource,
    size: tuple[int, int],
    max_pixels: int,
    resize: str = "stretch",
    draft: bool = False,
    grey: bool = False,
    working_side: int = 0,
) -> np.ndarray:
    """Decode a photo and bring it to ``size`` (width, height): stretched, or with ``pad``
    centred on a white square first. A uint8 array (height, width, 3). With ``draft``, JPEGs
    decode at the smallest reduced scale that still covers ``size``; with ``grey``, each pixel
    is its luma (ITU-R 601, Pillow's "L") in all three channels. With ``working_side``, a photo
    whose long side is longer is first brought down to it (aspect kept, Lanczos): the detail
    every source can give, whatever the size it came in."""
    img = load_rgb(source, max_pixels, (max(size), max(size)) if draft else None)
    if working_side and max(img.size) > working_side:
        scale = working_side / max(img.size)
        working = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(working, Image.Resampling.LANCZOS)
    if resize == "pad" and img.width != img.height:
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), _WHITE)
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    if grey:
        img = img.convert("L").convert("RGB")
    return np.asarray(img, dtype=np.uint8)
