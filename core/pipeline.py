"""Reader, mapper and writer stages of embedding: photos are decoded on a thread pool while
the model runs on the previous batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from core.encoder import ImageEncoder
from core.errors import InvalidImage
from core.images import ImageSource


@dataclass
class ImageFailure:
    product_id: str
    source: str
    message: str


@dataclass
class EmbeddedBatch:
    """Vectors of the photos in one batch that could be used, and why the others could not."""

    product_ids: list[str]
    vectors: np.ndarray
    failures: list[ImageFailure] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.product_ids) + len(self.failures)


def _prepare(encoder: ImageEncoder, source: ImageSource) -> np.ndarray | str:
    try:
        return encoder.prepare(source)
    except InvalidImage as exc:
        return exc.message


def _finish(
    encoder: ImageEncoder, batch: list[tuple[str, ImageSource, Future[np.ndarray | str]]]
) -> EmbeddedBatch:
    ids: list[str] = []
    inputs: list[np.ndarray] = []
    failures: list[ImageFailure] = []
    for product_id, source, future in batch:
        prepared = future.result()
        if isinstance(prepared, str):
            label = source if isinstance(source, str) else getattr(source, "name", "<upload>")
            failures.append(ImageFailure(product_id, str(label), prepared))
        else:
            ids.append(product_id)
            inputs.append(prepared)
    vectors = encoder.embed_batch(np.stack(inputs)) if inputs else np.zeros((0, 0), np.float32)
    return EmbeddedBatch(ids, vectors, failures)


def embed_images(
    encoder: ImageEncoder,
    items: Iterable[tuple[str, ImageSource]],
    batch_size: int,
    workers: int,
) -> Iterator[EmbeddedBatch]:
    """Embed (product id, photo) pairs in batches, keeping up to two batches decoding ahead.

    A photo that cannot be decoded becomes an :class:`ImageFailure` in its batch; the others
    are embedded as usual.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[list[tuple[str, ImageSource, Future[np.ndarray | str]]]] = deque()
        while True:
            chunk = list(islice(iterator, batch_size))
            if chunk:
                pending.append(
                    [(pid, src, pool.submit(_prepare, encoder, src)) for pid, src in chunk]
                )
            if pending and (len(pending) > 2 or not chunk):
                yield _finish(encoder, pending.popleft())
            if not chunk and not pending:
                return
