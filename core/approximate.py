"""Approximate full builds for large catalogues: faiss's inverted-file index (IVF, 8-bit codes).

An exact build scores every pair: about half an hour for a million products on two cores
(BENCHMARKS.md). In approximate mode each group of rows large enough gets an IVF index: its
rows are split among ``lists`` k-means centroids and kept as 8-bit codes, and a query scans
the rows of the ``probe`` lists nearest to it. The candidates found are rescored exactly from
the vectors, as in exact mode, so what can be wrong is only a true neighbour that was never
found.

``probe`` is not a constant: when a build is planned, a sample of rows is searched exactly
and with the index, and ``probe`` doubles until the sample's recall@k reaches the target
(``LOOKALIKE_APPROXIMATE_RECALL``). The trained index (without its rows), the probe and the
recall measured are stored with the build (``core.models.BuildIndex``), so every block, on
any worker, searches the same index and a block run twice computes the same lists.

Incremental adds and deletes stay exact in both modes (``core.neighbour_updates``): a
newcomer's list is its true top-k, and it enters every old list it belongs in. In
approximate mode an update therefore equals "the approximate table, then the exact update",
not an approximate rebuild (which would miss other pairs).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from core.settings import Settings

Mode = Literal["auto", "exact", "approximate"]

# Candidates beyond k each search keeps, to be rescored exactly (``core.neighbours``): the
# 8-bit scores of the index, like float32's, may misorder near ties.
CANDIDATES_OVER = 6
# Groups with fewer rows are searched exactly: cheap at that size, and an IVF gains nothing.
MIN_ROWS = 20_000
SAMPLE = 1_000  # rows whose exact lists calibrate the probe
FIRST_PROBE = 4
_SEED = 1234
# Training points per centroid: k-means on a sample, so training stays seconds at 1M rows.
_TRAIN_PER_LIST = 64
_TRAIN_ITERATIONS = 20


@dataclass(frozen=True)
class BuildSearch:
    """How full builds search (``LOOKALIKE_NEIGHBOUR_SEARCH`` and its two companions)."""

    mode: Mode = "exact"
    approximate_from: int = 500_000
    recall: float = 0.98

    @classmethod
    def of(cls, settings: Settings) -> BuildSearch:
        return cls(
            settings.neighbour_search, settings.approximate_from, settings.approximate_recall
        )

    def approximate(self, rows: int) -> bool:
        """Whether a full build of ``rows`` rows is approximate: ``auto`` switches at
        ``approximate_from`` rows."""
        if self.mode == "auto":
            return rows >= self.approximate_from
        return self.mode == "approximate"

    def indexes(
        self, vectors: np.ndarray, groups: np.ndarray | None, k: int
    ) -> dict[int, IvfSearch]:
        """Calibrated indexes of the large groups of ``vectors`` when a build of them is
        approximate (none when exact): for a build in one go, which stores nothing."""
        if not self.approximate(len(vectors)):
            return {}
        calibrated = calibrate_groups(vectors, groups, k, self.recall)
        return {group: search for group, (_, search) in calibrated.items()}


EXACT = BuildSearch()


def calibrate_groups(
    vectors: np.ndarray, groups: np.ndarray | None, k: int, target: float
) -> dict[int, tuple[IvfPlan, IvfSearch]]:
    """:func:`calibrate` for each of the large groups of ``vectors`` (:func:`large_groups`)."""
    return {
        group: calibrate(vectors, rows, k, target)
        for group, rows in large_groups(len(vectors), groups).items()
    }


def large_groups(count: int, groups: np.ndarray | None) -> dict[int, np.ndarray]:
    """The rows (ascending) of each group with at least :data:`MIN_ROWS` of ``count`` rows;
    group 0 holds every row when ungrouped."""
    if groups is None:
        return {0: np.arange(count)} if count >= MIN_ROWS else {}
    numbers, sizes = np.unique(groups, return_counts=True)
    return {
        int(group): np.flatnonzero(groups == group)
        for group, size in zip(numbers, sizes, strict=True)
        if size >= MIN_ROWS
    }


def lists_for(rows: int) -> int:
    """Inverted lists for ``rows`` rows: about the square root, so that a list and the
    centroids cost the same to scan (at least 39 rows per list, faiss's minimum to train)."""
    return max(1, min(round(math.sqrt(rows)), rows // 39))


@dataclass(frozen=True)
class IvfPlan:
    """One group's index as a build stores it: trained and empty (centroids and 8-bit codes'
    ranges, serialised by faiss), the calibrated probe, and the recall@k the calibration
    sample measured at that probe."""

    trained: bytes
    probe: int
    recall: float


@dataclass
class IvfSearch:
    """A group's rows in an IVF index, ready to search."""

    index: Any  # a faiss.IndexIVFScalarQuantizer (faiss types what it deserialises as Index)
    positions: np.ndarray  # the rows the index holds, ascending: label i is positions[i]

    @property
    def probe(self) -> int:
        return int(self.index.nprobe)


def _rows(vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``vectors[positions]`` as float32, without a copy when that is every row."""
    if len(positions) == len(vectors) and vectors.dtype == np.float32:
        return np.ascontiguousarray(vectors)
    return np.ascontiguousarray(vectors[positions], dtype=np.float32)


def open_index(vectors: np.ndarray, positions: np.ndarray, plan: IvfPlan) -> IvfSearch:
    """``vectors[positions]`` in ``plan``'s trained index. Rows are kept as 8-bit codes (a
    quarter of their float32 size): candidates are rescored from the vectors themselves."""
    index: Any = faiss.deserialize_index(np.frombuffer(plan.trained, dtype=np.uint8))
    index.add(_rows(vectors, positions))
    index.nprobe = plan.probe
    return IvfSearch(index, positions)


def calibrate(
    vectors: np.ndarray, positions: np.ndarray, k: int, target: float
) -> tuple[IvfPlan, IvfSearch]:
    """Train an index of ``vectors[positions]`` (k-means centroids, then the 8-bit codes, on a
    sample) and find the smallest probe (doubling from :data:`FIRST_PROBE`) whose recall@k on
    a sample of these rows reaches ``target``; all lists, an exhaustive scan, when none below
    does."""
    x32 = _rows(vectors, positions)
    lists = lists_for(len(positions))
    kmeans = faiss.Kmeans(
        x32.shape[1],
        lists,
        niter=_TRAIN_ITERATIONS,
        seed=_SEED,
        spherical=True,
        max_points_per_centroid=_TRAIN_PER_LIST,
        verbose=False,
    )
    rng = np.random.default_rng(_SEED)
    train = x32[np.sort(rng.choice(len(x32), min(len(x32), lists * _TRAIN_PER_LIST), False))]
    kmeans.train(train)
    quantizer = faiss.IndexFlatIP(x32.shape[1])
    quantizer.add(np.asarray(kmeans.centroids, dtype=np.float32))
    empty = faiss.IndexIVFScalarQuantizer(
        quantizer, x32.shape[1], lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    empty.train(train)  # the quantizer holds its centroids: this fits the codes' ranges only
    trained = faiss.serialize_index(empty).tobytes()
    # Over the group's own rows (x32), labelled with their positions among all the vectors.
    opened = open_index(x32, np.arange(len(x32)), IvfPlan(trained, FIRST_PROBE, 0.0))
    search = IvfSearch(opened.index, positions)
    sample = np.sort(rng.choice(len(x32), min(len(x32), SAMPLE), replace=False))
    truth = _exact_sets(x32, sample, k)
    probe = min(FIRST_PROBE, lists)
    while True:
        search.index.nprobe = probe
        recall = _recall(search, x32, sample, truth, k)
        if recall >= target or probe >= lists:
            break
        probe = min(2 * probe, lists)
    return IvfPlan(trained, probe, recall), search


def _exact_sets(x32: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k (local rows, itself excluded) of each sampled row, by float32 score
    (faiss's blocked scan: no sample x rows matrix is ever held)."""
    width = min(k, len(x32) - 1)
    _, labels = faiss.knn(x32[sample], x32, width + 1, metric=faiss.METRIC_INNER_PRODUCT)
    labels[labels == sample[:, None]] = -1
    # A stable sort by absence keeps the best-first order and drops the row itself.
    order = np.argsort(labels < 0, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(labels, order, axis=1)


def _recall(
    search: IvfSearch, x32: np.ndarray, sample: np.ndarray, truth: np.ndarray, k: int
) -> float:
    """Recall@k of the sample as a build finds it: the index's best ``k + CANDIDATES_OVER``
    (by their 8-bit scores), rescored from the vectors, the best k of those kept."""
    queries = x32[sample]
    _, labels = search.index.search(queries, k + CANDIDATES_OVER + 1)
    labels[labels == sample[:, None]] = -1
    scores = np.einsum("nd,nkd->nk", queries, x32[np.maximum(labels, 0)])
    scores[labels < 0] = -np.inf
    best = np.take_along_axis(labels, np.argsort(-scores, axis=1)[:, :k], axis=1)
    pairs = zip(best, truth, strict=True)
    hits = sum(len(np.intersect1d(found[found >= 0], want)) for found, want in pairs)
    return hits / max(truth.size, 1)


class IndexCache:
    """A process's open indexes of the build it ran a block of last: the blocks of one build
    that reach the same worker search the same index, opened once."""

    def __init__(self, builds: int = 1) -> None:
        self._limit = builds
        self._open: OrderedDict[str, dict[int, IvfSearch]] = OrderedDict()

    def get(self, key: str, open_all: Callable[[], dict[int, IvfSearch]]) -> dict[int, IvfSearch]:
        found = self._open.get(key)
        if found is None:
            while self._open and len(self._open) >= self._limit:
                self._open.popitem(last=False)  # first: two builds' indexes never held at once
            found = self._open[key] = open_all()
        self._open.move_to_end(key)
        return found

    def put(self, key: str, indexes: dict[int, IvfSearch]) -> None:
        """Keep ``indexes``, just opened (a plan calibrating them), for ``key``'s blocks."""
        self.get(key, lambda: indexes)
