"""The media folder (``LOOKALIKE_MEDIA_DIR``): photos that arrived over the API, stored by their
content, and removed once nothing refers to them.

One file can serve several referents (two products with the same photo, a search photo that is
also a product's, a replaced photo an unfinished add job may put back), so a file is removed only
when, at that moment, no product and no unfinished job refers to it. Callers remove only after
the change that dropped the last reference has committed: removing earlier would lose a photo
whose transaction then rolls back. Files outside the media folder (catalogue photos, indexed
where they lie) are never removed.

A residual race is accepted: an upload that reuses a stored file in the moment between another
request's commit and its removal of that file finds its photo gone; its add job then reports the
photo as failed and takes the product back, so nothing is left half-stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import in_chunks
from core.jobs import JobState
from core.models import Job, Product
from core.thumbnails import WIDTHS, thumbnail_path

log = logging.getLogger(__name__)

_SUFFIXES = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_UNFINISHED = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.FINALISING.value)


@dataclass(frozen=True)
class StoredImage:
    path: Path
    content_hash: str
    written: bool  # this call created the file (it was not stored before)


def store(media_dir: Path, data: bytes, fmt: str) -> StoredImage:
    """Write ``data`` under ``media_dir`` by its SHA-256 (the same photo is stored once)."""
    digest = hashlib.sha256(data).hexdigest()
    path = media_dir / digest[:2] / f"{digest}{_SUFFIXES.get(fmt, '.img')}"
    written = not path.is_file()
    if written:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)
    return StoredImage(path.resolve(), digest, written)


def job_photos(params: dict[str, Any]) -> set[str]:
    """Every stored photo a job's parameters name: a search photo, an add job's photos and the
    photos it replaced (which it puts back if the new one cannot be indexed)."""
    paths = {str(params["image_path"])} if params.get("image_path") else set()
    for key in ("photos", "previous"):
        paths.update(str(photo["image_path"]) for photo in (params.get(key) or {}).values())
    return paths


def referenced(session: Session, paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that a product or an unfinished job refers to."""
    wanted = sorted(set(paths))
    found: set[str] = set()
    for chunk in in_chunks(wanted):
        found.update(
            session.scalars(select(Product.image_path).where(Product.image_path.in_(chunk)))
        )
    for params in session.scalars(select(Job.params).where(Job.state.in_(_UNFINISHED))):
        found.update(job_photos(params or {}).intersection(wanted))
    return found


def remove_unreferenced(
    session: Session, media_dir: Path, paths: Iterable[str | Path]
) -> list[Path]:
    """Delete each of ``paths`` that lies in ``media_dir`` and that nothing refers to any more.
    Call it after the change that dropped the references has committed.

    Returns:
        The files removed.
    """
    root = media_dir.resolve()
    inside = {str(p) for p in paths if Path(p).resolve().is_relative_to(root)}
    removed: list[Path] = []
    for candidate in sorted(inside - referenced(session, inside)):
        path = Path(candidate)
        if not path.is_file():
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the two-letter shard, once empty
        # Its thumbnails too (named by the same content hash, core.thumbnails); made again on
        # demand if another product still has these bytes.
        for width in WIDTHS:
            thumbnail_path(media_dir, path.stem, width).unlink(missing_ok=True)
    if removed:
        log.info("media removed files=%d", len(removed))
    return removed
