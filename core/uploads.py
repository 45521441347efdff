"""Photos that arrive over the API: checked on arrival, stored content-addressed, registered."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.errors import InvalidImage, InvalidProductId, Rejected, UploadRejected
from core.images import check_image
from core.models import PRODUCT_ID_LENGTH, Product

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUFFIXES = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


@dataclass(frozen=True)
class StoredImage:
    path: Path
    content_hash: str


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> str:
    """Refuse what cannot be a product photo; returns the image format.

    Raises:
        InvalidImage: empty, too many bytes or pixels, or not an image Pillow can identify.
    """
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidImage(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    fmt, _width, _height = check_image(data, max_pixels)
    return fmt


def store_image(media_dir: Path, data: bytes, fmt: str) -> StoredImage:
    """Write ``data`` under ``media_dir`` by its SHA-256 (the same photo is stored once)."""
    digest = hashlib.sha256(data).hexdigest()
    path = media_dir / digest[:2] / f"{digest}{_SUFFIXES.get(fmt, '.img')}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)
    return StoredImage(path.resolve(), digest)


def validate_product_id(product_id: str) -> str:
    """A product id usable in URLs and file names.

    Raises:
        InvalidProductId: the id is empty, too long, or has characters other than letters,
            digits, '.', '_' and '-'.
    """
    if not product_id or len(product_id) > PRODUCT_ID_LENGTH or not _ID_PATTERN.match(product_id):
        raise InvalidProductId(
            f"invalid product id {product_id!r}: use up to {PRODUCT_ID_LENGTH} letters, digits, "
            "'.', '_' or '-'"
        )
    return product_id


def register_product(
    session: Session, product_id: str, image: StoredImage, meta: dict[str, Any] | None
) -> bool:
    """Insert or update a product for an uploaded photo.

    Returns:
        True when an existing product's photo was replaced (its vector must be redone).
    """
    product = session.get(Product, product_id)
    if product is None:
        session.add(
            Product(
                id=product_id,
                meta=meta or {},
                image_path=str(image.path),
                content_hash=image.content_hash,
            )
        )
        return False
    replaced = product.content_hash != image.content_hash
    product.image_path = str(image.path)
    product.content_hash = image.content_hash
    if meta is not None:
        product.meta = meta
    return replaced


@dataclass(frozen=True)
class Upload:
    """One photo as it arrived, with the id and metadata the client gave it (if any)."""

    filename: str
    data: bytes
    product_id: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Accepted:
    product_ids: list[str]
    replaced: list[str]
    rejected: list[Rejected]


def accept_uploads(
    session: Session,
    uploads: list[Upload],
    media_dir: Path,
    max_bytes: int,
    max_pixels: int,
) -> Accepted:
    """Check every photo, store the good ones and register them as products.

    Raises:
        UploadRejected: every photo was refused (nothing is stored).
    """
    good: list[tuple[Upload, str, str]] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for upload in uploads:
        try:
            fmt = check_upload(upload.data, max_bytes, max_pixels)
            product_id = validate_product_id(upload.product_id or Path(upload.filename).stem)
            if product_id in seen:
                raise InvalidProductId(f"product id {product_id!r} appears twice in the request")
        except (InvalidImage, InvalidProductId) as exc:
            rejected.append(Rejected(upload.filename, exc.message))
            continue
        seen.add(product_id)
        good.append((upload, fmt, product_id))
    if not good:
        raise UploadRejected(rejected)
    replaced = []
    for upload, fmt, product_id in good:
        image = store_image(media_dir, upload.data, fmt)
        if register_product(session, product_id, image, upload.meta):
            replaced.append(product_id)
    session.flush()
    return Accepted([product_id for _, _, product_id in good], replaced, rejected)
