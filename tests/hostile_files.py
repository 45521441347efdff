"""Hostile and awkward photo files, generated: every kind a catalogue or an upload may hold,
each with whether Lookalike must index it and, if not, a phrase its refusal must contain.

Good files are all different pictures (a seeded pattern each), so no two have the same vector
and a neighbour table built from them has no ties. Bad files are refused either for their
content (``phrase`` names the reason) or for their name (``bad_name``: the content is a good
photo, the file name is not a usable product id).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 50_000_000  # the default LOOKALIKE_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class HostileFile:
    """One generated file."""

    kind: str  # what it is, for messages
    name: str  # its file name
    data: bytes
    good: bool  # must be indexed, under the stem of its name
    phrase: str = ""  # bad content: what the refusal says
    bad_name: bool = False  # good content, but a name that is no product id
    hidden: bool = False  # a dot file: a folder scan skips it, as it skips .DS_Store

    @property
    def product_id(self) -> str:
        return Path(self.name).stem


def picture(seed: int, size: tuple[int, int] = (96, 128)) -> Image.Image:
    """A distinct RGB picture: a smooth random field in each channel, plus a dark block whose
    place depends on the seed (so even greyscale inputs differ)."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    block = (
        int(rng.integers(0, max(1, width - width // 3))),
        int(rng.integers(0, max(1, height - height // 3))),
    )
    img.paste((10, 10, 10), (*block, block[0] + width // 3, block[1] + height // 3))
    return img


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``width`` x ``height`` pixels."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b"\x3b"


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _animated_gif(seed: int) -> bytes:
    frames = [picture(seed + i, (64, 80)).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buffer.getvalue()


def _palette_with_transparency(seed: int) -> bytes:
    img = picture(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def _rgba(seed: int) -> bytes:
    img = picture(seed).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(img.size)
    img.putalpha(alpha)
    return encode(img, "PNG")


def _sixteen_bit(seed: int) -> bytes:
    grey = np.asarray(picture(seed).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey.astype("<u2")), "PNG")


def _zip_of(name: str, text: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, text)
    return buffer.getvalue()


def _corrupt_png(seed: int) -> bytes:
    data = bytearray(encode(picture(seed), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 40] = bytes(30)  # compressed pixel data overwritten
    return bytes(data)


def _corrupt_jpeg_header(seed: int) -> bytes:
    data = bytearray(encode(picture(seed), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = bytes(4)  # frame header: height and width of 0
    return bytes(data)


def _with_text_chunk(png: bytes, chunk: bytes) -> bytes:
    """``png`` with ``chunk`` inserted right after its header (IHDR ends at byte 33)."""
    return png[:33] + chunk + png[33:]


def _text_bomb(seed: int) -> bytes:
    """A PNG whose zTXt comment inflates from about 64 KB to 64 MB."""
    comment = b"Comment\x00\x00" + zlib.compress(bytes(64 * 1024 * 1024), 9)
    return _with_text_chunk(encode(picture(seed), "PNG"), _png_chunk(b"zTXt", comment))


def _huge_text(seed: int) -> bytes:
    """A PNG with a 2 MB plain-text comment before its pixels (under Pillow's text limits)."""
    comment = b"Comment\x00" + b"a" * (2 * 1024 * 1024)
    return _with_text_chunk(encode(picture(seed), "PNG"), _png_chunk(b"tEXt", comment))


def _prefixed(name: str, prefix: str) -> str:
    """``name`` with ``prefix``, a dot file staying a dot file."""
    return f".{prefix}{name[1:]}" if name.startswith(".") else f"{prefix}{name}"


def hostile_files(variant: int = 0) -> list[HostileFile]:
    """Every kind, in a fixed order, each good one a distinct picture. Another ``variant``
    gives other pictures under names prefixed ``v<variant>-`` (a bad name stays bad), so
    that two variants can be stored side by side."""
    base = 100 * variant

    def seed(n: int) -> int:
        return base + n

    jpeg = encode(picture(seed(1)), "JPEG", quality=90)
    png = encode(picture(seed(2)), "PNG")
    long_stem = "l" * 251
    files = [
        # --- good: must be indexed once each ----------------------------------------------
        HostileFile("baseline JPEG", "good-jpeg.jpg", jpeg, True),
        HostileFile(
            "progressive JPEG",
            "progressive.jpg",
            encode(picture(seed(3)), "JPEG", progressive=True),
            True,
        ),
        HostileFile(
            "CMYK JPEG", "cmyk.jpg", encode(picture(seed(4)).convert("CMYK"), "JPEG"), True
        ),
        HostileFile("16-bit greyscale PNG", "sixteen-bit.png", _sixteen_bit(seed(5)), True),
        HostileFile("RGBA PNG with an alpha gradient", "alpha.png", _rgba(seed(6)), True),
        HostileFile(
            "palette PNG with transparency",
            "palette.png",
            _palette_with_transparency(seed(7)),
            True,
        ),
        HostileFile(
            "JPEG with EXIF orientation 6",
            "exif-6.jpg",
            encode(picture(seed(8)), "JPEG", exif=_exif(6)),
            True,
        ),
        HostileFile(
            "JPEG with EXIF orientation 8",
            "exif-8.jpg",
            encode(picture(seed(9)), "JPEG", exif=_exif(8)),
            True,
        ),
        HostileFile("animated GIF (3 frames)", "animated.gif", _animated_gif(seed(10)), True),
        HostileFile("WebP", "photo.webp", encode(picture(seed(13)), "WEBP", quality=90), True),
        HostileFile("TIFF", "photo-tiff.tif", encode(picture(seed(14)), "TIFF"), True),
        HostileFile("BMP", "photo-bmp.bmp", encode(picture(seed(15)), "BMP"), True),
        HostileFile(
            "1x1 PNG",
            "one-pixel.png",
            encode(Image.new("RGB", (1, 1), (200, 40 + variant, 40)), "PNG"),
            True,
        ),
        HostileFile(
            "10000x10 strip", "strip.png", encode(picture(seed(16), (10_000, 10)), "PNG"), True
        ),
        HostileFile(
            "JPEG with a 1 MB ICC profile header",
            "huge-icc.jpg",
            encode(picture(seed(17)), "JPEG", icc_profile=bytes(range(256)) * 4096),
            True,
        ),
        HostileFile(
            "JPEG+ZIP polyglot",
            "polyglot.jpg",
            encode(picture(seed(18)), "JPEG")
            + _zip_of("payload.html", b"<script>alert(1)</script>"),
            True,
        ),
        HostileFile(
            "JPEG with trailing garbage",
            "trailing.jpg",
            encode(picture(seed(19)), "JPEG") + b"\x00garbage\xff" * 1000,
            True,
        ),
        HostileFile(
            "1-bit PNG", "one-bit.png", encode(picture(seed(20)).convert("1"), "PNG"), True
        ),
        HostileFile(
            "odd but valid id (dots, dashes, underscores, upper-case suffix)",
            "Odd.name_with-dots.JPG",
            encode(picture(seed(21)), "JPEG"),
            True,
        ),
        HostileFile("PNG with a 2 MB text comment", "huge-text.png", _huge_text(seed(28)), True),
        HostileFile(
            "first of two files with one stem", "twin.jpg", encode(picture(seed(29)), "JPEG"), True
        ),
        # --- bad content: refused with a reason ----------------------------------------------
        HostileFile("empty file", "empty.jpg", b"", False, "empty file"),
        HostileFile(
            "plain text", "text.jpg", b"this is not an image\n" * 20, False, "not an image"
        ),
        HostileFile(
            "HTML page",
            "page.png",
            b"<!doctype html><html><script>alert(1)</script></html>",
            False,
            "not an image",
        ),
        HostileFile(
            "SVG with a script",
            "vector.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b"<script>alert(1)</script><rect width='10' height='10'/></svg>",
            False,
            "not an image",
        ),
        HostileFile(
            "ZIP named .jpg", "archive.jpg", _zip_of("a.txt", b"hello"), False, "not an image"
        ),
        HostileFile(
            "truncated JPEG", "truncated-jpeg.jpg", jpeg[: len(jpeg) // 2], False, "truncated"
        ),
        HostileFile(
            "truncated PNG", "truncated-png.png", png[: len(png) // 2], False, "truncated|corrupt"
        ),
        HostileFile(
            "corrupt PNG data", "corrupt-png.png", _corrupt_png(seed(22)), False, "corrupt"
        ),
        HostileFile(
            "JPEG with a zero-size frame header",
            "corrupt-jpeg.jpg",
            _corrupt_jpeg_header(seed(23)),
            False,
            "corrupt|no pixels|not an image",
        ),
        HostileFile(
            "PNG bomb: a 60-byte header claiming 100000x100000",
            "bomb-header.png",
            png_claiming(100_000, 100_000),
            False,
            "over the limit",
        ),
        HostileFile(
            "GIF bomb: a screen of 65535x65535",
            "bomb-gif.gif",
            gif_claiming(65_535, 65_535),
            False,
            "over the limit",
        ),
        HostileFile(
            "PNG bomb: 10000x6000 real pixels, a few KB compressed",
            "bomb-pixels.png",
            encode(Image.new("1", (10_000, 6_000)), "PNG", optimize=True),
            False,
            "over the limit",
        ),
        HostileFile(
            "PNG comment bomb: 64 KB of zTXt inflating to 64 MB",
            "bomb-text.png",
            _text_bomb(seed(31)),
            False,
            "too large",
        ),
        # --- good content, bad names -------------------------------------------------------
        HostileFile(
            "unicode name", "café-ñ.jpg", encode(picture(seed(24)), "JPEG"), False, bad_name=True
        ),
        HostileFile(
            "name with spaces",
            "my photo.jpg",
            encode(picture(seed(25)), "JPEG"),
            False,
            bad_name=True,
        ),
        HostileFile(
            "251-character name",
            f"{long_stem}.jpg",
            encode(picture(seed(26)), "JPEG"),
            False,
            bad_name=True,
        ),
        HostileFile(
            "leading dot",
            ".hidden.jpg",
            encode(picture(seed(27)), "JPEG"),
            False,
            bad_name=True,
            hidden=True,
        ),
        HostileFile(
            "second of two files with one stem",
            "twin.png",
            encode(picture(seed(32)), "PNG"),
            False,
            "appears twice",
            bad_name=True,
        ),
    ]
    if variant:
        files = [replace(f, name=_prefixed(f.name, f"v{variant}-")) for f in files]
    names = [f.name for f in files]
    assert len(set(names)) == len(names), "file names must be unique"
    return files
