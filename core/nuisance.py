"""What a photo's source does to its vector, learned from the catalogue's own photos.

A 60x80 supplier thumbnail and the studio original of the same product have pooled vectors
with a cosine near 0.99, yet the small differences all point the same few ways (blur from
upscaling, JPEG blocks), and among products whose vectors are all that close those directions
decide the neighbours: small photos find small photos. So when a projection is fitted, a sample
of the catalogue's photos is embedded a second time, each shrunk to a random size between a
quarter of the model input and the full input and recompressed at a random JPEG quality, and
the leading directions of the differences are removed from every vector before the PCA
(QUALITY.md, "Photo sources"). No labels, and no sizes of any catalogue: the range follows the
model input, the sample is the catalogue's.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from core.encoder import ImageEncoder, l2_normalise
from core.errors import InvalidImage
from core.images import ImageSource, load_rgb
from core.pipeline import embed_images
from core.products import photo_paths
from core.vectors import VectorSet

log = logging.getLogger(__name__)

# Photos embedded again at each fit: enough for a stable basis of a few dozen directions.
SAMPLE = 2048
SMALLEST = 0.25  # of the model input's side: the smallest long side a degraded copy gets
JPEG_QUALITY = (50, 95)


def product_rng(product_id: str) -> np.random.Generator:
    """The same degradation of the same product at every fit."""
    return np.random.default_rng(zlib.crc32(product_id.encode()))


def degrade(img: Image.Image, side: int, rng: np.random.Generator) -> bytes:
    """``img`` as a lesser source would have it: its long side shrunk to a random length in
    [``SMALLEST * side``, ``side``] (never enlarged), saved as JPEG at a random quality."""
    longest = rng.uniform(SMALLEST * side, side)
    scale = min(1.0, longest / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = img.resize(size, Image.Resampling.BILINEAR) if size != img.size else img
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY, endpoint=True)))
    return buffer.getvalue()


def sample_ids(ids: Sequence[str], count: int = SAMPLE) -> list[str]:
    """Up to ``count`` of ``ids``, spread by hash rather than taken from one end of the
    catalogue, and the same for the same ids."""
    return sorted(ids, key=lambda pid: (zlib.crc32(pid.encode()), pid))[:count]


def basis(originals: np.ndarray, degraded: np.ndarray, rank: int) -> np.ndarray | None:
    """The ``rank`` leading directions (orthonormal columns, d x rank) of the differences
    between vectors and their degraded copies; None without enough pairs for them."""
    rank = min(rank, len(originals) // 2, originals.shape[1])
    if rank <= 0:
        return None
    diff = np.asarray(l2_normalise(originals) - l2_normalise(degraded), dtype=np.float64)
    _, vectors = np.linalg.eigh(diff.T @ diff)  # ascending
    return np.ascontiguousarray(vectors[:, ::-1][:, :rank])


def source_basis(
    session: Session,
    encoder: ImageEncoder,
    vectors: VectorSet,
    rank: int,
    *,
    batch_size: int,
    workers: int,
    max_pixels: int,
) -> np.ndarray | None:
    """The nuisance basis of this catalogue: a sample of its photos degraded and embedded
    again with ``encoder``, against their stored vectors. Photos that no longer decode are
    left out of the sample."""
    chosen = sample_ids(vectors.ids)
    paths = photo_paths(session, chosen)

    def copies() -> Iterator[tuple[str, ImageSource]]:
        for pid in chosen:
            if pid not in paths:
                continue
            try:
                img = load_rgb(paths[pid], max_pixels)
            except InvalidImage as exc:
                log.warning("photo of %s left out of the source sample: %s", pid, exc.message)
                continue
            yield pid, degrade(img, encoder.input_side, product_rng(pid))

    ids: list[str] = []
    chunks: list[np.ndarray] = []
    for batch in embed_images(encoder, copies(), batch_size, workers):
        ids.extend(batch.product_ids)
        if batch.product_ids:
            chunks.append(batch.vectors)
    if not ids:
        return None
    found = basis(vectors.vectors[vectors.positions(ids)], np.concatenate(chunks), rank)
    rank_found = 0 if found is None else found.shape[1]
    log.info("photo sources: %d directions from %d photo pairs", rank_found, len(ids))
    return found
