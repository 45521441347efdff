"""Reading a catalogue folder: the Kaggle "Fashion Product Images" layout or plain images.

Kaggle layout::

    <root>/images/<id>.jpg
    <root>/styles.csv        id,gender,...,productDisplayName

Plain layout: any folder of images, searched recursively; the id is the file stem.

Ids and metadata pass the checks of ``core.metadata``, as they do over the API: a file whose
stem is not a usable id is reported and skipped, a row whose metadata cannot be stored is
reported and its photo indexed without metadata.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CatalogueError, InvalidMetadata, InvalidProductId
from core.metadata import validate_metadata, validate_product_id

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
STYLES_FILE = "styles.csv"


@dataclass(frozen=True)
class CatalogueItem:
    """One product photo found on disk, with whatever metadata the catalogue gives it."""

    product_id: str
    path: Path
    meta: dict[str, Any]


@dataclass
class Catalogue:
    """What a folder holds, and what did not line up."""

    root: Path
    layout: str
    items: list[CatalogueItem]
    rows_without_image: list[str] = field(default_factory=list)
    images_without_row: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)
    invalid_ids: list[str] = field(default_factory=list)

    def problems(self) -> Iterator[str]:
        """One human sentence per kind of mismatch, for reports."""
        if self.rows_without_image:
            yield _summary("styles.csv rows have no image", self.rows_without_image)
        if self.images_without_row:
            yield _summary(
                "images have no styles.csv row (indexed without metadata)", self.images_without_row
            )
        if self.duplicate_ids:
            yield _summary("ids appear more than once (first file kept)", self.duplicate_ids)
        if self.bad_rows:
            yield _summary("styles.csv lines could not be used", self.bad_rows)
        if self.invalid_ids:
            yield _summary(
                "file names are not usable product ids (skipped; "
                "use letters, digits, '.', '_' or '-')",
                self.invalid_ids,
            )


def _summary(what: str, ids: list[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} {what}: {', '.join(ids[:shown])}{more}"


def read_styles(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Read ``styles.csv`` as {id: metadata} (see :func:`parse_styles`)."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        return parse_styles(handle, str(path))


def parse_styles(lines: Iterable[str], source: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Metadata rows, as in ``styles.csv``: a header with an ``id`` column, then one row per
    product, each other column a metadata field (empty: none).

    The real Kaggle file has rows whose last column (``productDisplayName``) holds unquoted
    commas; the extra fields of such a row are joined back into that column.

    Returns:
        The rows by id, and descriptions of rows that could not be used: a row whose id is
        not a usable product id is left out, a row whose metadata cannot be stored is kept
        with none, and a column whose name cannot be a metadata key is ignored.

    Raises:
        CatalogueError: no header, or no ``id`` column.
    """
    rows: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    reader = csv.reader(lines)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CatalogueError(f"{source} is empty") from None
    if "id" not in header:
        raise CatalogueError(f"{source} has no 'id' column (header: {header})")
    id_column = header.index("id")
    width = len(header)
    columns = [name != "id" and _usable_column(name, bad) for name in header]
    for line_no, fields in enumerate(reader, start=2):
        if not any(value.strip() for value in fields):
            continue
        if len(fields) > width:
            fields = [*fields[: width - 1], ",".join(fields[width - 1 :])]
        elif len(fields) < width:
            bad.append(f"line {line_no} ({len(fields)} of {width} fields)")
            continue
        product_id = fields[id_column].strip()
        if not product_id:
            bad.append(f"line {line_no} (empty id)")
            continue
        try:
            validate_product_id(product_id)
        except InvalidProductId as exc:
            bad.append(f"line {line_no} ({exc.message})")
            continue
        meta = {
            name: (value.strip() or None)
            for name, value, used in zip(header, fields, columns, strict=True)
            if used
        }
        try:
            rows[product_id] = validate_metadata(meta)
        except InvalidMetadata as exc:
            bad.append(f"line {line_no} (id {product_id}: {exc.message}; kept without metadata)")
            rows[product_id] = {}
    return rows, bad


def _usable_column(name: str, bad: list[str]) -> bool:
    """Whether a header name can be a metadata key; if not, why is added to ``bad``."""
    try:
        validate_metadata({name: None})
    except InvalidMetadata as exc:
        bad.append(f"line 1 (column {name[:40]!r} ignored: {exc.message})")
        return False
    return True


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(
        path
        for path in pattern
        if path.is_file()
        and not path.name.startswith(".")
        and (not recursive or path.suffix.lower() in IMAGE_SUFFIXES)
    )


def read_catalogue(root: str | Path) -> Catalogue:
    """Find every product photo under ``root``.

    Raises:
        CatalogueError: ``root`` is not a folder, or its ``styles.csv`` is unreadable.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CatalogueError(f"{root} is not a folder")
    images_dir = root / "images"
    styles_path = root / STYLES_FILE
    if images_dir.is_dir():
        # Kaggle layout: every file in images/ is a product photo, whatever its name ends in,
        # so that a bad file is reported against its product instead of silently skipped.
        catalogue = Catalogue(root=root, layout="kaggle", items=[])
        files = _image_files(images_dir, recursive=False)
    else:
        catalogue = Catalogue(root=root, layout="folder", items=[])
        files = _image_files(root, recursive=True)

    styles: dict[str, dict[str, Any]] = {}
    if styles_path.is_file():
        styles, catalogue.bad_rows = read_styles(styles_path)

    seen: set[str] = set()
    for path in files:
        product_id = path.stem
        try:
            validate_product_id(product_id)
        except InvalidProductId:
            shown = product_id if len(product_id) <= 40 else f"{product_id[:40]}..."
            catalogue.invalid_ids.append(repr(shown))
            continue
        if product_id in seen:
            catalogue.duplicate_ids.append(product_id)
            continue
        seen.add(product_id)
        meta = styles.get(product_id)
        if meta is None and styles:
            catalogue.images_without_row.append(product_id)
        catalogue.items.append(CatalogueItem(product_id, path.resolve(), dict(meta or {})))
    catalogue.rows_without_image = sorted(set(styles) - seen, key=_id_sort_key)
    return catalogue


def _id_sort_key(product_id: str) -> tuple[int, str]:
    return (0, f"{int(product_id):020d}") if product_id.isdigit() else (1, product_id)


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes: a photo that changes is embedded again."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
