"""Reader, mapper and writer stages of embedding: photos are decoded on a thread pool while
the model runs on the previous batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from core import metrics
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


def _label(source: ImageSource) -> str:
    if isinstance(source, str | bytes):
        return source if isinstance(source, str) else "<upload>"
    return str(getattr(source, "name", source))


@dataclass
class _Prepared:
    product_ids: list[str]
    inputs: np.ndarray | None
    failures: list[ImageFailure]


def _prepare_batch(encoder: ImageEncoder, chunk: list[tuple[str, ImageSource]]) -> _Prepared:
    """Decode and preprocess one batch, stacked, in a pool thread (off the model's thread)."""
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    failures: list[ImageFailure] = []
    for product_id, source in chunk:
        try:
            arrays.append(encoder.prepare(source))
            ids.append(product_id)
        except InvalidImage as exc:
            failures.append(ImageFailure(product_id, _label(source), exc.message))
    return _Prepared(ids, np.stack(arrays) if arrays else None, failures)


def _embed(encoder: ImageEncoder, prepared: _Prepared) -> EmbeddedBatch:
    if prepared.inputs is None:
        return EmbeddedBatch([], np.zeros((0, 0), np.float32), prepared.failures)
    with metrics.work().embedding_seconds.time():
        vectors = encoder.embed_batch(prepared.inputs)
    return EmbeddedBatch(prepared.product_ids, vectors, prepared.failures)


def embed_images(
    encoder: ImageEncoder,
    items: Iterable[tuple[str, ImageSource]],
    batch_size: int,
    workers: int,
) -> Iterator[EmbeddedBatch]:
    """Embed (product id, photo) pairs in batches; ``workers`` threads each decode a whole
    batch ahead while the model runs on the current one.

    A photo that cannot be decoded becomes an :class:`ImageFailure` in its batch; the others
    are embedded as usual.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[_Prepared]] = deque()
        for chunk in iter(lambda: list(islice(iterator, batch_size)), []):
            pending.append(pool.submit(_prepare_batch, encoder, chunk))
            if len(pending) > workers:
                yield _embed(encoder, pending.popleft().result())
        while pending:
            yield _embed(encoder, pending.popleft().result())
