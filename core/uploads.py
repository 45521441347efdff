"""Photos that arrive over the API: checked on arrival (decoded whole), stored content-addressed
(``core.media``), registered, and taken back when they cannot be indexed after all."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.catalogue import parse_styles
from core.errors import (
    CatalogueError,
    InvalidImage,
    InvalidMetadata,
    InvalidProductId,
    Rejected,
    UploadRejected,
)
from core.images import verify_image
from core.media import StoredImage, store
from core.metadata import validate_metadata, validate_product_id
from core.models import Product, search_text_of


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> str:
    """Refuse what cannot be a product photo; returns the image format.

    The photo is decoded whole (after its size is checked against ``max_pixels``), so a
    truncated or corrupt file is refused here rather than stored and failed in a worker.

    Raises:
        InvalidImage: empty, too many bytes or pixels, not an image Pillow can identify,
            truncated or corrupt.
    """
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidImage(f"file is {len(data):,} bytes, over the limit of {max_bytes:,}")
    fmt, _width, _height = verify_image(data, max_pixels)
    return fmt


@dataclass(frozen=True)
class Photo:
    """A product's photo as a job's parameters record it (and its metadata, for a former one)."""

    image_path: str
    content_hash: str
    meta: dict[str, Any] | None = None

    def as_params(self) -> dict[str, Any]:
        return {"image_path": self.image_path, "content_hash": self.content_hash, "meta": self.meta}

    @classmethod
    def of(cls, params: dict[str, Any]) -> Photo:
        return cls(params["image_path"], params["content_hash"], params.get("meta"))


def _insert_new(
    session: Session, product_id: str, image: StoredImage, meta: dict[str, Any]
) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True when this call created the product. A request
    registering the same new id at the same moment waits for the other's commit, then finds
    the product there, instead of failing on the primary key."""
    table: Table = Product.__table__  # type: ignore[assignment]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {
        "id": product_id,
        "meta": meta,
        "image_path": str(image.path),
        "content_hash": image.content_hash,
    }
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(table.c.id)
    return session.execute(statement).first() is not None


def register_product(
    session: Session, product_id: str, image: StoredImage, meta: dict[str, Any] | None
) -> Photo | None:
    """Insert or update a product for an uploaded photo.

    Returns:
        The product's former photo and metadata, or None when this call created it.
    """
    if _insert_new(session, product_id, image, meta or {}):
        return None
    product = session.get(Product, product_id, with_for_update=True, populate_existing=True)
    assert product is not None  # it conflicted, and products are deleted by jobs only
    former = Photo(product.image_path, product.content_hash, dict(product.meta or {}))
    product.image_path = str(image.path)
    product.content_hash = image.content_hash
    if meta is not None:
        product.meta = meta
    return former


@dataclass(frozen=True)
class Upload:
    """One photo as it arrived, with the id and metadata the client gave it (if any)."""

    filename: str
    data: bytes
    product_id: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class MetadataSheet:
    """A CSV of metadata sent beside the photos, laid out as ``styles.csv``: an ``id`` column
    (the product ids, or the photos' file names without extension) and one column per field."""

    name: str
    rows: dict[str, dict[str, Any]]
    problems: list[str]

    @classmethod
    def parse(cls, data: bytes, name: str) -> MetadataSheet:
        """Raises:
        InvalidMetadata: not a CSV with an ``id`` column."""
        text = data.decode("utf-8-sig", errors="replace")
        try:
            rows, problems = parse_styles(io.StringIO(text, newline=""), name)
        except CatalogueError as exc:
            raise InvalidMetadata(f"metadata CSV {exc.message}") from None
        # An empty cell gives no value: the field is left out, not stored as null.
        kept = {pid: {k: v for k, v in meta.items() if v is not None} for pid, meta in rows.items()}
        return cls(name, kept, problems)

    def applied(self, uploads: Sequence[Upload]) -> tuple[list[Upload], list[Rejected]]:
        """``uploads`` with each one's row as its metadata, under the fields the upload gives
        itself (they win); and the sheet's problems, and rows that match no photo, as refusals
        (the photos go on)."""
        used: set[str] = set()
        merged: list[Upload] = []
        for upload in uploads:
            product_id = upload.product_id or Path(upload.filename).stem
            row = self.rows.get(product_id)
            if row is None:
                merged.append(upload)
                continue
            used.add(product_id)
            merged.append(replace(upload, meta={**row, **(upload.meta or {})}))
        refused = [Rejected(self.name, problem) for problem in self.problems]
        refused += [
            Rejected(self.name, f"row for {pid!r} matches no photo in this request")
            for pid in sorted(self.rows.keys() - used)
        ]
        return merged, refused


@dataclass
class Accepted:
    """What a request registered: enough to take it back (``take_back``)."""

    product_ids: list[str]
    replaced: list[str]  # existing products whose photo changed
    rejected: list[Rejected]
    created: list[str] = field(default_factory=list)
    photos: dict[str, Photo] = field(default_factory=dict)  # each product's photo now
    former: dict[str, Photo] = field(default_factory=dict)  # existing products' before
    written: list[Path] = field(default_factory=list)  # files this request added to the media

    def as_params(self) -> dict[str, Any]:
        """The add job's parameters."""
        return {
            "product_ids": self.product_ids,
            "replaced": self.replaced,
            "created": self.created,
            "photos": {pid: photo.as_params() for pid, photo in self.photos.items()},
            "previous": {pid: photo.as_params() for pid, photo in self.former.items()},
        }


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
            if upload.meta is not None:
                validate_metadata(upload.meta)
        except (InvalidImage, InvalidProductId, InvalidMetadata) as exc:
            rejected.append(Rejected(upload.filename, exc.message))
            continue
        seen.add(product_id)
        good.append((upload, fmt, product_id))
    if not good:
        raise UploadRejected(rejected)
    accepted = Accepted([product_id for _, _, product_id in good], [], rejected)
    for upload, fmt, product_id in good:
        image = store(media_dir, upload.data, fmt)
        if image.written:
            accepted.written.append(image.path)
        accepted.photos[product_id] = Photo(str(image.path), image.content_hash)
        former = register_product(session, product_id, image, upload.meta)
        if former is None:
            accepted.created.append(product_id)
            continue
        accepted.former[product_id] = former
        if former.content_hash != image.content_hash:
            accepted.replaced.append(product_id)
    session.flush()
    return accepted


@dataclass(frozen=True)
class TakenBack:
    removed: list[str]  # products the job had created
    restored: list[str]  # products given back their former photo


def take_back(
    session: Session, params: dict[str, Any], product_ids: list[str], *, metadata: bool = True
) -> TakenBack:
    """Undo what an add job's request registered for ``product_ids``: a product it created is
    deleted, an existing one gets its former photo back (and, with ``metadata``, its former
    metadata). A product whose photo has changed since (another request replaced it) is left
    to that request. Never commits; the caller removes the files afterwards
    (``core.media.remove_unreferenced``).
    """
    photos = {pid: Photo.of(value) for pid, value in (params.get("photos") or {}).items()}
    former = {pid: Photo.of(value) for pid, value in (params.get("previous") or {}).items()}
    created = set(params.get("created") or [])
    removed: list[str] = []
    restored: list[str] = []
    for pid in product_ids:
        if pid not in photos:
            continue
        mine = (Product.id == pid) & (Product.content_hash == photos[pid].content_hash)
        if pid in created:
            if session.execute(delete(Product).where(mine)).rowcount:  # type: ignore[attr-defined]
                removed.append(pid)
        elif pid in former:
            old = former[pid]
            values: dict[str, Any] = {
                "image_path": old.image_path,
                "content_hash": old.content_hash,
            }
            if metadata and old.meta is not None:
                values["meta"] = old.meta
                values["search_text"] = search_text_of(old.meta)  # no ORM listener here
            result = session.execute(update(Product).where(mine).values(**values))
            if result.rowcount:  # type: ignore[attr-defined]
                restored.append(pid)
    session.flush()
    return TakenBack(removed, restored)
