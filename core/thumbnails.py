"""Resized copies of product photos for the pages: a few fixed widths, WebP, made once per
photo content and kept on disk beside the media.

A thumbnail is named by the photo's content hash and its width, so it is never stale: a
product whose photo changes points at another content hash, and so at another file. Files are
written to a temporary name and renamed, so a reader never sees half of one and two processes
making the same one at once both succeed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from core.errors import InvalidRequest
from core.images import load_rgb

# Widths the pages ask for: grid cards (180 CSS px, 360 on 2x screens), the product photo (240).
WIDTHS = (180, 240, 360, 480)
QUALITY = 80
MEDIA_TYPE = "image/webp"
FOLDER = "thumbnails"


def check_width(width: int) -> int:
    """``width`` when it is one of :data:`WIDTHS`.

    Raises:
        InvalidRequest: any other width (each one would be another file on disk).
    """
    if width not in WIDTHS:
        shown = ", ".join(str(w) for w in WIDTHS)
        raise InvalidRequest(f"w must be one of {shown}")
    return width


def thumbnail_path(media_dir: Path, content_hash: str, width: int) -> Path:
    return media_dir / FOLDER / content_hash[:2] / f"{content_hash}-{width}.webp"


def thumbnail(media_dir: Path, source: str, content_hash: str, width: int, max_pixels: int) -> Path:
    """The ``width``-pixel-wide WebP of the photo at ``source`` (never wider than the photo
    itself, aspect kept), made now if it was not made before.

    Raises:
        InvalidImage: the stored photo no longer decodes.
    """
    path = thumbnail_path(media_dir, content_hash, check_width(width))
    if path.is_file():
        return path
    img = load_rgb(source, max_pixels)  # EXIF orientation applied, RGB on white
    if img.width > width:
        img = ImageOps.contain(
            img, (width, max(1, round(img.height * width / img.width))), Image.Resampling.LANCZOS
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            img.save(out, format="WEBP", quality=QUALITY, method=4)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
