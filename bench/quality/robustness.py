"""Do photo sources decide the neighbours? Issue 13's robustness benchmark, on the encoder the
settings give (the default recipe unless ``LOOKALIKE_*`` says otherwise).

Three measurements, each through the project's own encoder, projection and exact top-k:

- *copies*: every photo also as a 60x80 thumbnail, JPEG quality 30, a 2x upscale, a 15% white
  margin and a mirror image, each encoded as a file and decoded as an upload would be. For each
  kind: how often the copy's first neighbour in the catalogue of originals is its own original,
  and the mean cosine of copy and original (pooled vectors, and after the catalogue's PCA).
- *mixed catalogue*: a random half of the photos replaced by their own 60x80 versions, indexed
  together (one projection fitted on the mixed catalogue): the share of a low-resolution
  product's ten neighbours that are low-resolution (0.5: no bias), the same for full-resolution
  products, and micro / macro P@10 on articleType beside the uniform catalogue's.
- *incremental*: the same catalogue, the full-resolution half indexed first (its projection
  fitted on it, as an index job does) and the 60x80 half added afterwards, 100 a request, as
  ``POST /api/products`` adds them: with the projection frozen between refits, and fitted
  again after the add that grows the catalogue to ``LOOKALIKE_REFIT_GROWTH`` times its fitted
  size (``core.refits``; ``LOOKALIKE_REFIT_GROWTH=0``: frozen throughout).

Pooled vectors are cached per model id under ``--cache``, so reruns only score.

    python -m bench.quality.robustness ../shared/datasets/fashion-dev (an unpacked copy)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from sqlalchemy.orm import Session

from cli.in_process import InProcessQueue, index_catalogue
from core import nuisance
from core.catalogue import CatalogueItem, read_catalogue
from core.context import Context
from core.db import make_engine
from core.encoder import VGG16Encoder, l2_normalise, load_encoder
from core.evaluation import evaluate_lists, lists_of, stored_lists
from core.images import load_rgb
from core.model_spec import resolve_spec
from core.neighbours import NO_NEIGHBOUR, search, top_k
from core.projection import Projection, fit_projection
from core.settings import Settings, get_settings
from core.space_reader import SqlSpaceReader
from core.submissions import submit_add_products
from core.uploads import Upload
from migrations import upgrade

K = 10
LABEL = "articleType"
THUMBNAIL = (60, 80)  # the Kaggle "small" size: width x height, a box the photo is fitted into
MARGIN = 0.15
SEED = 0


def _encode(img: Image.Image, quality: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if quality is None:
        img.save(buffer, format="PNG")
    else:
        img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail(img: Image.Image, box: tuple[int, int] = THUMBNAIL) -> bytes:
    """Fitted into ``box`` (aspect kept), saved as JPEG at Pillow's default quality (75), as
    shops' thumbnail services do."""
    small = img.copy()
    small.thumbnail(box, Image.Resampling.LANCZOS)
    return _encode(small, 75)


def jpeg30(img: Image.Image) -> bytes:
    return _encode(img, 30)


def upscale2x(img: Image.Image) -> bytes:
    return _encode(img.resize((img.width * 2, img.height * 2), Image.Resampling.BICUBIC))


def margin15(img: Image.Image) -> bytes:
    """15% of each side added as white around the photo (the product smaller in its frame)."""
    dx, dy = round(img.width * MARGIN), round(img.height * MARGIN)
    return _encode(ImageOps.expand(img, (dx, dy, dx, dy), fill=(255, 255, 255)))


def mirror(img: Image.Image) -> bytes:
    return _encode(ImageOps.mirror(img))


COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "thumbnail 60x80": thumbnail,
    "JPEG quality 30": jpeg30,
    "2x upscale": upscale2x,
    "15% white margin": margin15,
    "mirrored": mirror,
    # Not in the list: sizes the recipe was not looked at with while it was chosen.
    "thumbnail 45x60": lambda img: thumbnail(img, (45, 60)),
    "thumbnail 30x40": lambda img: thumbnail(img, (30, 40)),
    "thumbnail 120x160": lambda img: thumbnail(img, (120, 160)),
}
TARGETED = ("thumbnail 60x80", "JPEG quality 30", "2x upscale")  # self-retrieval >= 0.99
KAGGLE = "Kaggle's own 60x80"


@dataclass
class Photos:
    ids: list[str]
    paths: list[Path]
    labels: dict[str, str]
    items: list[CatalogueItem]


def read_photos(root: Path) -> Photos:
    catalogue = read_catalogue(root)
    ids = [item.product_id for item in catalogue.items]
    labels = {
        item.product_id: str(item.meta[LABEL]) for item in catalogue.items if item.meta.get(LABEL)
    }
    return Photos(ids, [item.path for item in catalogue.items], labels, catalogue.items)


class Embedder:
    """Pooled vectors of the photos, of each kind of copy and of the degraded copies the
    projection fit makes of them (``core.nuisance.degrade``), cached on disk per model id."""

    def __init__(self, settings: Settings, cache: Path, small: Path | None) -> None:
        self.settings = settings
        self.spec = resolve_spec(settings)
        self.small = small
        self.encoder: VGG16Encoder | None = None
        key = hashlib.sha256(self.spec.model_id.encode()).hexdigest()[:12]
        self.cache = cache / key
        self.cache.mkdir(parents=True, exist_ok=True)
        (self.cache / "model_id").write_text(self.spec.model_id)
        self.seconds = 0.0
        self.images = 0

    def _source(self, photos: Photos, at: int, kind: str | None) -> bytes | Path:
        if kind == KAGGLE:
            assert self.small is not None
            return self.small / "images" / photos.paths[at].name
        if kind is None:
            return photos.paths[at]
        return COPIES[kind](load_rgb(photos.paths[at], self.settings.max_image_pixels))

    def vectors(self, photos: Photos, kind: str | None, degraded: bool = False) -> np.ndarray:
        """The photos (``kind`` None) or a kind of copy; ``degraded``: as the projection fit
        degrades them."""
        name = "original" if kind is None else kind.replace(" ", "_").replace("%", "pc")
        name = name.replace("'", "") + ("-degraded" if degraded else "")
        path = self.cache / f"{name}-{len(photos.ids)}.npy"
        if path.is_file():
            return np.asarray(np.load(path))
        if self.encoder is None:
            self.encoder = VGG16Encoder(self.spec, self.settings.max_image_pixels)
        encoder = self.encoder
        started = time.perf_counter()
        out = []
        batch = self.settings.batch_size
        for start in range(0, len(photos.paths), batch):
            inputs = []
            for at in range(start, min(start + batch, len(photos.paths))):
                source = self._source(photos, at, kind)
                if degraded:
                    img = load_rgb(source, self.settings.max_image_pixels)
                    rng = nuisance.product_rng(photos.ids[at])
                    source = nuisance.degrade(img, encoder.input_side, rng)
                inputs.append(encoder.prepare(source))
            out.append(encoder.embed_batch(np.stack(inputs)))
        self.seconds += time.perf_counter() - started
        self.images += len(photos.paths)
        vectors = np.concatenate(out)
        np.save(path, vectors)
        return vectors


def fit(settings: Settings, pooled: np.ndarray, degraded: np.ndarray) -> Projection | None:
    """The projection an index job fits on a catalogue of these vectors (``degraded``: the
    same photos as ``core.nuisance`` degrades them; every one is in its sample here)."""
    if settings.pca_dims <= 0 or len(pooled) < 2 * settings.pca_dims:
        return None
    basis = None
    if settings.source_dims > 0:
        basis = nuisance.basis(pooled, degraded, settings.source_dims)
    return fit_projection(
        pooled, settings.pca_dims, settings.pca_power, settings.pca_whiten, nuisance=basis
    )


def project(projection: Projection | None, pooled: np.ndarray) -> np.ndarray:
    return l2_normalise(pooled) if projection is None else projection.apply(pooled)


@dataclass
class CopyRow:
    kind: str
    first_is_original: float
    in_top10: float
    mean_cosine_pooled: float
    mean_cosine_projected: float


def copy_rows(
    settings: Settings, embedder: Embedder, photos: Photos, log: Callable[[str], None]
) -> list[CopyRow]:
    """Each copy searched among the originals (projection fitted on the originals)."""
    originals = embedder.vectors(photos, None)
    projection = fit(settings, originals, embedder.vectors(photos, None, degraded=True))
    catalogue = project(projection, originals)
    rows = []
    own = np.arange(len(photos.ids))
    kinds = list(COPIES) + ([KAGGLE] if embedder.small else [])
    for kind in kinds:
        copies = embedder.vectors(photos, kind)
        queries = project(projection, copies)
        found = search(catalogue, queries, K)
        rows.append(
            CopyRow(
                kind,
                float(np.mean(found.positions[:, 0] == own)),
                float(np.mean((found.positions == own[:, None]).any(axis=1))),
                float(np.mean(np.sum(l2_normalise(copies) * l2_normalise(originals), axis=1))),
                float(np.mean(np.sum(queries * catalogue, axis=1))),
            )
        )
        log(f"copies {kind}: {rows[-1]}")
    return rows


@dataclass
class CatalogueRow:
    catalogue: str
    low_share_low: float | None  # share of a low-resolution product's neighbours that are low
    full_share_full: float | None
    micro: float
    macro: float
    micro_low: float | None
    micro_full: float | None


def score(name: str, photos: Photos, vectors: np.ndarray, low: np.ndarray | None) -> CatalogueRow:
    return _score_lists(name, photos, top_k(vectors, K).positions, low)


def _score_lists(
    name: str, photos: Photos, positions: np.ndarray, low: np.ndarray | None
) -> CatalogueRow:
    lists = lists_of(photos.ids, positions)
    whole = evaluate_lists(name, lists, photos.labels, LABEL, K)
    if low is None:
        return CatalogueRow(
            name, None, None, whole.micro_precision, whole.macro_precision, None, None
        )
    is_low = np.zeros(len(photos.ids), dtype=bool)
    is_low[low] = True
    neighbour_low = is_low[positions]  # NO_NEIGHBOUR (-1) never occurs: lists are full
    ids = np.array(photos.ids)
    part = {
        side: evaluate_lists(
            name, {pid: lists[pid] for pid in ids[mask]}, photos.labels, LABEL, K
        ).micro_precision
        for side, mask in (("low", is_low), ("full", ~is_low))
    }
    return CatalogueRow(
        name,
        float(neighbour_low[is_low].mean()),
        float((~neighbour_low[~is_low]).mean()),
        whole.micro_precision,
        whole.macro_precision,
        part["low"],
        part["full"],
    )


ADD_BATCH = 100  # photos per add request, as --through-jobs sends them


def fitted_after_adds(
    settings: Settings, pooled: np.ndarray, degraded: np.ndarray, indexed: np.ndarray
) -> Projection | None:
    """The projection the catalogue ends with when the rows ``indexed`` were indexed first and
    the others (in row order) came in ``ADD_BATCH`` at a time through add jobs: fitted on the
    indexed rows, and again on the whole catalogue of the moment after the add that brings it
    to ``LOOKALIKE_REFIT_GROWTH`` times the rows of the last fit (``core.refits``)."""
    added = np.setdiff1d(np.arange(len(pooled)), indexed)
    rows = indexed
    for start in range(0, len(added), ADD_BATCH):
        present = np.union1d(indexed, added[: start + ADD_BATCH])
        if settings.refit_growth and len(present) >= settings.refit_growth * len(rows):
            rows = present
    return fit(settings, pooled[rows], degraded[rows])


def small_half(count: int, seed: int = SEED) -> np.ndarray:
    """The rows whose photos are replaced by small ones: a random half, sorted."""
    return np.sort(np.random.default_rng(seed).permutation(count)[: count // 2])


def mixed_rows(
    settings: Settings,
    embedder: Embedder,
    photos: Photos,
    small_kind: str,
    seed: int = SEED,
) -> tuple[CatalogueRow, CatalogueRow]:
    """The mixed catalogue of one random half, indexed together and with the small half added
    to an indexed catalogue."""
    originals = embedder.vectors(photos, None)
    degraded = embedder.vectors(photos, None, degraded=True)
    small = embedder.vectors(photos, small_kind)
    small_degraded = embedder.vectors(photos, small_kind, degraded=True)
    count = len(photos.ids)
    low = small_half(count, seed)
    mixed, mixed_degraded = originals.copy(), degraded.copy()
    mixed[low], mixed_degraded[low] = small[low], small_degraded[low]
    full = np.setdiff1d(np.arange(count), low)
    return (
        score(
            f"mixed ({small_kind}), indexed together",
            photos,
            project(fit(settings, mixed, mixed_degraded), mixed),
            low,
        ),
        score(
            f"mixed ({small_kind}), small half added to an indexed catalogue",
            photos,
            project(fitted_after_adds(settings, mixed, mixed_degraded, full), mixed),
            low,
        ),
    )


def catalogue_rows(
    settings: Settings,
    embedder: Embedder,
    photos: Photos,
    small_kind: str,
    log: Callable[[str], None],
) -> list[CatalogueRow]:
    """Uniform, mixed (indexed together, and the small half added later), all small; the
    small half is ``small_kind`` (a 60x80 thumbnail, or Kaggle's own)."""
    originals = embedder.vectors(photos, None)
    degraded = embedder.vectors(photos, None, degraded=True)
    small = embedder.vectors(photos, small_kind)
    small_degraded = embedder.vectors(photos, small_kind, degraded=True)
    full = np.setdiff1d(np.arange(len(photos.ids)), small_half(len(photos.ids)))
    rows = [
        score(
            "uniform (today's catalogue)",
            photos,
            project(fit(settings, originals, degraded), originals),
            None,
        ),
        *mixed_rows(settings, embedder, photos, small_kind),
        score(
            f"all {small_kind}", photos, project(fit(settings, small, small_degraded), small), None
        ),
        # The reference for the incremental row: the same two halves, all full-resolution (a
        # projection fitted on half the catalogue loses a little by itself).
        score(
            "uniform, second half added to an indexed catalogue",
            photos,
            project(fitted_after_adds(settings, originals, degraded, full), originals),
            None,
        ),
    ]
    for row in rows:
        log(f"catalogue {row}")
    return rows


@dataclass
class HalvesRow:
    """A mixed catalogue over several random halves: each measure's mean, least and most;
    P@10 as the difference to the uniform catalogue."""

    catalogue: str
    halves: int
    low_share_low: tuple[float, float, float]
    full_share_full: tuple[float, float, float]
    micro_gap: tuple[float, float, float]
    macro_gap: tuple[float, float, float]
    # The added rows against the uniform catalogue built the same way (its second half added,
    # same draw): what the photo sources cost, apart from the fit on part of the catalogue.
    macro_gap_alike: tuple[float, float, float] | None = None


def halves_rows(
    settings: Settings,
    embedder: Embedder,
    photos: Photos,
    small_kind: str,
    uniform: CatalogueRow,
    halves: int,
) -> list[HalvesRow]:
    """Macro P@10 over fashion-dev's 30 article types, 14 of them with fewer than 11 photos,
    moves by several thousandths with the draw of the small half: the mixed rows over
    ``halves`` draws (seeds 0, 1, ...), seed 0 being the rows above."""
    drawn = [mixed_rows(settings, embedder, photos, small_kind, seed) for seed in range(halves)]
    originals = embedder.vectors(photos, None)
    degraded = embedder.vectors(photos, None, degraded=True)
    count = len(photos.ids)
    alike = [
        score(
            "uniform, added alike",
            photos,
            project(
                fitted_after_adds(
                    settings,
                    originals,
                    degraded,
                    np.setdiff1d(np.arange(count), small_half(count, seed)),
                ),
                originals,
            ),
            None,
        ).macro
        for seed in range(halves)
    ]

    def spread(values: list[float]) -> tuple[float, float, float]:
        return float(np.mean(values)), float(np.min(values)), float(np.max(values))

    out = []
    for at in range(2):
        rows = [pair[at] for pair in drawn]
        out.append(
            HalvesRow(
                rows[0].catalogue,
                halves,
                spread([row.low_share_low or 0.0 for row in rows]),
                spread([row.full_share_full or 0.0 for row in rows]),
                spread([row.micro - uniform.micro for row in rows]),
                spread([row.macro - uniform.macro for row in rows]),
                spread([row.macro - ref for row, ref in zip(rows, alike, strict=True)])
                if at == 1
                else None,
            )
        )
    return out


def markdown(result: dict[str, Any], label: str) -> str:
    """The rows as QUALITY.md shows them."""
    lines = [
        f"*{label}* (`{result['model_id']}`, PCA {result['pca_dims']}, "
        f"{result['source_dims']} source directions removed)",
        "",
        "| copy | original is first neighbour | in top 10 | cosine pooled | cosine projected |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["copies"]:
        lines.append(
            f"| {row['kind']} | {row['first_is_original']:.3f} | {row['in_top10']:.3f} "
            f"| {row['mean_cosine_pooled']:.4f} | {row['mean_cosine_projected']:.3f} |"
        )
    lines += [
        "",
        "| catalogue | low: share low | full: share full | micro P@10 | macro P@10 |",
        "|---|---:|---:|---:|---:|",
    ]

    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for row in result["catalogues"]:
        lines.append(
            f"| {row['catalogue']} | {share(row['low_share_low'])} "
            f"| {share(row['full_share_full'])} | {row['micro']:.3f} | {row['macro']:.3f} |"
        )
    if result.get("halves"):
        lines += [
            "",
            "| catalogue, over random halves | halves | low: share low | full: share full "
            "| micro P@10 - uniform | macro P@10 - uniform | macro - uniform added alike |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]

        def spread(value: list[float], signed: bool = False) -> str:
            form = "+.3f" if signed else ".2f"
            return f"{value[0]:{form}} ({value[1]:{form}} to {value[2]:{form}})"

        for row in result["halves"]:
            lines.append(
                f"| {row['catalogue']} | {row['halves']} | {spread(row['low_share_low'])} "
                f"| {spread(row['full_share_full'])} | {spread(row['micro_gap'], True)} "
                f"| {spread(row['macro_gap'], True)} "
                f"| {spread(row['macro_gap_alike'], True) if row['macro_gap_alike'] else ''} |"
            )
    return "\n".join(lines)


def through_jobs(
    settings: Settings, photos: Photos, workdir: Path, log: Callable[[str], None]
) -> CatalogueRow:
    """The mixed catalogue as a merchandiser builds it, through the system's own jobs: the
    full-resolution half indexed (``lookalike index``'s in-process job, SQLite), then the 60x80
    half uploaded as an add job would take them from ``POST /api/products``, 100 a request;
    scored from the stored lists."""
    count = len(photos.ids)
    low = small_half(count)
    is_low = np.zeros(count, dtype=bool)
    is_low[low] = True
    job_settings = settings.model_copy(
        update={"database_url": f"sqlite:///{workdir / 'jobs.db'}", "media_dir": workdir / "media"}
    )
    upgrade(job_settings.database_url)
    engine = make_engine(job_settings.database_url)
    queue = InProcessQueue()
    context = Context.create(
        job_settings, queue, spaces=SqlSpaceReader(), encoder=load_encoder(settings)
    )
    started = time.perf_counter()
    with Session(engine) as session:
        full = [item for item, small in zip(photos.items, is_low, strict=True) if not small]
        for _ in index_catalogue(context, session, full):
            pass
        uploads = [
            Upload(
                f"{item.product_id}.jpg",
                thumbnail(load_rgb(item.path, settings.max_image_pixels)),
                item.product_id,
                item.meta,
            )
            for item, small in zip(photos.items, is_low, strict=True)
            if small
        ]
        for start in range(0, len(uploads), ADD_BATCH):
            submit_add_products(context, session, uploads[start : start + ADD_BATCH])
            for _ in queue.run(context, session):
                pass
        lists, spaces = stored_lists(session)
    engine.dispose()
    log(f"through jobs: {time.perf_counter() - started:.0f} s, space {sorted(spaces)}")
    positions = np.full((count, K), NO_NEIGHBOUR, dtype=np.int64)
    at = {pid: pos for pos, pid in enumerate(photos.ids)}
    for pid, neighbours in lists.items():
        positions[at[pid], : len(neighbours)] = [at[n] for n in neighbours[:K]]
    return _score_lists(
        "mixed (thumbnail 60x80), small half added through add jobs", photos, positions, low
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("catalogue", type=Path, help="a Kaggle-layout folder (fashion-dev)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lookalike",
    )
    parser.add_argument(
        "--small", type=Path, help="fashion-small (unpacked): its own 60x80 photos of the same ids"
    )
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    parser.add_argument(
        "--halves", type=int, default=5, help="random halves the mixed rows are also drawn over"
    )
    parser.add_argument(
        "--through-jobs",
        action="store_true",
        help="also build the incremental mixed catalogue through the real index and add jobs",
    )
    args = parser.parse_args()
    settings = get_settings()
    photos = read_photos(args.catalogue)
    embedder = Embedder(settings, args.cache / "robustness", args.small)
    print(
        f"model {embedder.spec.model_id}; projection {settings.pca_dims} dims, "
        f"{settings.source_dims} source directions removed",
        flush=True,
    )
    say = functools.partial(print, flush=True)
    copies = copy_rows(settings, embedder, photos, say)
    catalogues = catalogue_rows(settings, embedder, photos, "thumbnail 60x80", say)
    halves = halves_rows(settings, embedder, photos, "thumbnail 60x80", catalogues[0], args.halves)
    if args.small:
        kaggle = catalogue_rows(settings, embedder, photos, KAGGLE, say)
        catalogues += [row for row in kaggle if not row.catalogue.startswith("uniform")]
        halves += halves_rows(settings, embedder, photos, KAGGLE, catalogues[0], args.halves)
    for spread in halves:
        say(f"halves {spread}")
    result: dict[str, Any] = {
        "model_id": embedder.spec.model_id,
        "pca_dims": settings.pca_dims,
        "source_dims": settings.source_dims,
        "photos": len(photos.ids),
        "copies": [asdict(row) for row in copies],
        "catalogues": [asdict(row) for row in catalogues],
        "halves": [asdict(row) for row in halves],
        "images_per_second": embedder.images / embedder.seconds if embedder.seconds else None,
    }
    if args.through_jobs:
        with tempfile.TemporaryDirectory() as workdir:
            row = through_jobs(settings, photos, Path(workdir), say)
        say(f"catalogue {row}")
        result["catalogues"].append(asdict(row))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(markdown(result, "this run"))


if __name__ == "__main__":
    main()
