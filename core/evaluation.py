"""Retrieval quality against labels. Labels are only the yardstick: never used for similarity.

precision@k of a query is the share of its k neighbours with the query's label; *micro* averages
it over queries, *macro* over label values (each value's queries averaged first), so a catalogue
that is half T-shirts cannot hide poor results on everything else. AP@k divides by
min(k, products sharing the label) and is averaged over queries that have at least one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.encoder import PixelEncoder
from core.models import Neighbour, Product
from core.neighbours import NO_NEIGHBOUR, top_k
from core.pipeline import embed_images
from core.products import photo_paths
from core.vectors import VectorSet


@dataclass
class LabelScore:
    label: str
    products: int
    precision: float


@dataclass
class Evaluation:
    name: str
    label_column: str
    k: int
    queries: int
    micro_precision: float
    macro_precision: float
    mean_average_precision: float
    per_label: list[LabelScore] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_lists(
    name: str,
    lists: Mapping[str, Sequence[str]],
    labels: Mapping[str, str],
    label_column: str,
    k: int,
) -> Evaluation:
    """Score neighbour lists (product id -> ids, best first) against ``labels``."""
    sizes = Counter(labels.values())
    per_label: dict[str, list[float]] = defaultdict(list)
    precisions: list[float] = []
    average_precisions: list[float] = []
    for product_id, neighbours in lists.items():
        label = labels.get(product_id)
        if label is None:
            continue
        hits = np.array([labels.get(n) == label for n in neighbours[:k]], dtype=np.float64)
        precision = float(hits.sum()) / k
        precisions.append(precision)
        per_label[label].append(precision)
        relevant = min(k, sizes[label] - 1)
        if relevant > 0:
            cumulative = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            average_precisions.append(float((cumulative * hits).sum()) / relevant)
    by_label = sorted(
        (
            LabelScore(label, sizes[label], float(np.mean(values)))
            for label, values in per_label.items()
        ),
        key=lambda score: (-score.products, score.label),
    )
    return Evaluation(
        name=name,
        label_column=label_column,
        k=k,
        queries=len(precisions),
        micro_precision=float(np.mean(precisions)) if precisions else 0.0,
        macro_precision=float(np.mean([s.precision for s in by_label])) if by_label else 0.0,
        mean_average_precision=float(np.mean(average_precisions)) if average_precisions else 0.0,
        per_label=by_label,
    )


def product_labels(session: Session, column: str) -> dict[str, str]:
    """Each product's value of a metadata column (products without it are left out)."""
    labels = {}
    for product_id, meta in session.execute(select(Product.id, Product.meta)):
        value = (meta or {}).get(column)
        if value not in (None, ""):
            labels[product_id] = str(value)
    return labels


def stored_lists(session: Session) -> tuple[dict[str, list[str]], set[str]]:
    """The neighbour table as {product: [neighbours by rank]}, and the space ids behind it."""
    lists: dict[str, list[str]] = defaultdict(list)
    spaces: set[str] = set()
    for product_id, neighbour_id, space_id in session.execute(
        select(Neighbour.product_id, Neighbour.neighbour_id, Neighbour.space_id).order_by(
            Neighbour.product_id, Neighbour.rank
        )
    ):
        lists[product_id].append(neighbour_id)
        spaces.add(space_id)
    return dict(lists), spaces


def vector_lists(vectors: VectorSet, k: int, block_size: int = 2048) -> dict[str, list[str]]:
    return lists_of(vectors.ids, top_k(vectors.vectors, k, block_size).positions)


def lists_of(ids: Sequence[str], positions: np.ndarray) -> dict[str, list[str]]:
    """Neighbour positions (one row per id, NO_NEIGHBOUR for none) as lists of ids."""
    return {
        pid: [ids[pos] for pos in row if pos != NO_NEIGHBOUR]
        for pid, row in zip(ids, positions, strict=True)
    }


def pixel_vectors(
    session: Session, product_ids: Sequence[str], max_pixels: int, workers: int
) -> VectorSet:
    """Raw-pixel vectors (16x16 thumbnails, centred) of products: the no-network baseline."""
    encoder = PixelEncoder(max_pixels)
    paths = photo_paths(session, product_ids)
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    items = [(pid, paths[pid]) for pid in sorted(paths)]
    for batch in embed_images(encoder, items, batch_size=256, workers=workers):
        ids.extend(batch.product_ids)
        chunks.append(batch.vectors)
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
    return VectorSet(ids, matrix)
