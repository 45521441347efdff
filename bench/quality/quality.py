"""Which label-free VGG16 feature recipe finds the most similar products, by measurement.

One trunk pass per input view over fashion-dev (bundled offline weights), each batch's
block3/4/5 maps pooled at once and cached under ``--cache``; then recipes (layers, pooling,
concatenation, PCA whitening, power normalisation, graph re-ranking, multi-scale sums) are
searched in stages, each stage building on the best of the one before. Every list is scored
with ``core.evaluation.evaluate_lists`` against ``articleType``, the same code as
``lookalike evaluate``; labels never touch the vectors. Every scored recipe, sorted by macro
then micro precision@10, goes to docs/quality-recipes.csv; the summary and the best rows of that
ranking replace the generated part of QUALITY.md.

    python bench/quality/quality.py            # about 20 minutes on 2 cores, writes both
    python bench/quality/quality.py --quick    # 300 photos, nothing written
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import ROOT, commit, machine, record, unpacked
from bench.quality.pooled_features import (
    DEFAULT_VIEWS,
    LAYERS,
    POOLS,
    VIEWS,
    ViewFeatures,
    build_trunk,
    cached_features,
)
from bench.quality.recipes import (
    Part,
    PcaCache,
    Recipe,
    Rerank,
    as_lists,
    neighbour_positions,
    recipe_vectors,
)
from bench.quality.ssl_head import train_head
from core.catalogue import read_catalogue
from core.encoder import PixelEncoder
from core.evaluation import evaluate_lists

K = 10
LABEL = "articleType"
COLOUR = "baseColour"
QUALITY = ROOT / "QUALITY.md"
RESULTS = ROOT / "docs" / "quality-recipes.csv"
TOP_ROWS = 15  # of the ranking, in QUALITY.md; every row is in RESULTS
START, END = "<!-- quality.py:start -->", "<!-- quality.py:end -->"
TARGET_MACRO, TARGET_MICRO, TARGET_MARGIN = 0.45, 0.80, 0.15
POWERS = (1.0, 0.5)
PCA_GRID = tuple(itertools.product((32, 64, 96, 128, 256), (1.0, 0.5), (0.5, 1.0)))
RERANKS = (
    *(Rerank("dba", n, a) for n in (2, 3, 5, 8) for a in (1.0, 3.0)),
    *(Rerank("aqe", n, a) for n in (3, 5, 8) for a in (1.0, 3.0)),
    *(Rerank("diffusion", n, a) for n in (5, 10, 15, 20, 50) for a in (0.8, 0.9, 0.95, 0.99)),
)
PROBE_PARTS = (Part("b4", "gem"), Part("b5", "avg", 0.5))


@dataclass
class Row:
    recipe: str
    micro: float
    macro: float
    mean_ap: float
    colour: float
    dims: int
    images_per_second: float
    stage: str
    graph: bool
    per_label: dict[str, float] = dataclasses.field(default_factory=dict, repr=False)

    def key(self) -> tuple[float, float]:
        return (self.macro, self.micro)


class Bench:
    """The catalogue, its pooled features, and every scored recipe."""

    def __init__(self, ids: list[str], labels: dict[str, str], colours: dict[str, str]) -> None:
        self.ids = ids
        self.labels = labels
        self.colours = colours
        self.store: dict[str, dict[str, np.ndarray]] = {}
        self.speed: dict[str, float] = {}
        self.rows: list[Row] = []
        self.scored: dict[Recipe, Row] = {}
        self.pca_cache: PcaCache = {}
        self.baseline_positions = np.zeros((0, K), dtype=np.int64)
        self.pass_seconds = 0.0  # trunk passes, decoding and pooling included
        self.cached_views = 0

    def add_view(self, features: ViewFeatures) -> None:
        self.store[features.view.name] = dict(features.pooled)
        self.speed[features.view.name] = features.trunk_images_per_second
        self.pass_seconds += features.total_seconds
        self.cached_views += features.from_cache

    def images_per_second(self, views: Iterable[str]) -> float:
        return 1.0 / sum(1.0 / self.speed[view] for view in views)

    def score_lists(
        self, name: str, positions: np.ndarray, dims: int, ips: float, stage: str, graph: bool
    ) -> Row:
        lists = as_lists(positions, self.ids)
        by_type = evaluate_lists(name, lists, self.labels, LABEL, K)
        by_colour = evaluate_lists(name, lists, self.colours, COLOUR, K)
        row = Row(
            name,
            by_type.micro_precision,
            by_type.macro_precision,
            by_type.mean_average_precision,
            by_colour.micro_precision,
            dims,
            ips,
            stage,
            graph,
            {score.label: score.precision for score in by_type.per_label},
        )
        self.rows.append(row)
        return row

    def score(self, recipe: Recipe, stage: str) -> Row:
        if recipe in self.scored:
            return self.scored[recipe]
        vectors = recipe_vectors(recipe, self.store, cache=self.pca_cache)
        positions = neighbour_positions(vectors, K, recipe.rerank)
        row = self.score_lists(
            recipe.label() + (f" ({recipe.note})" if recipe.note else ""),
            positions,
            vectors.shape[1],
            self.images_per_second(recipe.views),
            stage,
            recipe.rerank is not None,
        )
        self.scored[recipe] = row
        return row

    def score_all(self, recipes: Iterable[Recipe], stage: str) -> list[tuple[Recipe, Row]]:
        return [(recipe, self.score(recipe, stage)) for recipe in recipes]


def best(scored: Sequence[tuple[Recipe, Row]], count: int = 1) -> list[Recipe]:
    ranked = sorted(scored, key=lambda pair: pair[1].key(), reverse=True)
    return [recipe for recipe, _ in ranked[:count]]


def with_views(recipe: Recipe, views: tuple[str, ...]) -> Recipe:
    parts = tuple(dataclasses.replace(part, views=views) for part in recipe.parts)
    return dataclasses.replace(recipe, parts=parts)


def post_grid(parts: tuple[Part, ...]) -> list[Recipe]:
    """The same parts under plain L2 and every PCA dimension, whitening and power tried."""
    return [Recipe(parts)] + [
        Recipe(parts, pca=dims, whiten=whiten, power=power) for dims, whiten, power in PCA_GRID
    ]


def search(bench: Bench, views: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The staged search; returns the recipes worth naming in the report."""
    main_views = [view for view in views if not VIEWS[view].thumbnail and not VIEWS[view].flip]

    # 1. Every layer and pooling alone, in every view: plain, and PCA-whitened to 128 dims.
    single: dict[tuple[str, str], list[tuple[Recipe, Row]]] = {}
    for view, layer in itertools.product(main_views, LAYERS):
        recipes = []
        for pool, power in itertools.product(POOLS, POWERS):
            part = Part(layer, pool, power, (view,))
            recipes += [Recipe((part,)), Recipe((part,), pca=128, whiten=1.0, power=0.5)]
        single[(view, layer)] = bench.score_all(recipes, "1 single layer")
    log(f"stage 1: {len(bench.rows)} recipes scored")

    # The best pooling of each layer in each view (judged after PCA whitening, as used later),
    # and the views ranked by their best single layer.
    def best_part(view: str, layer: str) -> Part:
        whitened = [pair for pair in single[(view, layer)] if pair[0].pca]
        return best(whitened)[0].parts[0]

    view_rank = sorted(
        main_views,
        key=lambda view: max(row.key() for layer in LAYERS for _, row in single[(view, layer)]),
        reverse=True,
    )
    # The three best views, and the two best that keep colour, go on.
    top_views = view_rank[:3]
    top_views += [view for view in view_rank if not VIEWS[view].grey][:2]
    top_views = list(dict.fromkeys(top_views))

    # 2. Concatenations of the best pooling per layer, then PCA / whitening / power grid.
    stage2: list[tuple[Recipe, Row]] = []
    for view in top_views:
        per_layer = {layer: best_part(view, layer) for layer in LAYERS}
        combos = [("b4",), ("b5",), ("b3",), ("b4", "b5"), ("b3", "b4"), ("b3", "b5")]
        combos.append(("b3", "b4", "b5"))
        for combo in combos:
            stage2 += bench.score_all(
                post_grid(tuple(per_layer[layer] for layer in combo)), "2 concat + PCA"
            )
        probe = tuple(dataclasses.replace(part, views=(view,)) for part in PROBE_PARTS)
        stage2 += bench.score_all(post_grid(probe), "2 concat + PCA")
    log(f"stage 2: {len(bench.rows)} recipes scored")

    # 3. Every pooling pair for the best two-layer concatenation, at its best post-processing.
    leader = best(stage2)[0]
    stage3 = list(stage2)
    if len(leader.parts) >= 2:
        first, second, *rest = leader.parts
        pairs = [
            dataclasses.replace(
                leader,
                parts=(
                    dataclasses.replace(first, pool=p1, power=w1),
                    dataclasses.replace(second, pool=p2, power=w2),
                    *rest,
                ),
            )
            for (p1, w1), (p2, w2) in itertools.product(itertools.product(POOLS, POWERS), repeat=2)
        ]
        stage3 += bench.score_all(pairs, "3 pooling pairs")
    leader = best(stage3)[0]
    stage3 += bench.score_all(post_grid(leader.parts), "3 pooling pairs")
    log(f"stage 3: {len(bench.rows)} recipes scored")

    # 4. Multi-scale and mirrored inputs: L2-normalised vectors of several views summed.
    leader = best(stage3)[0]
    base_view = leader.views[0]
    others = [view for view in views if view != base_view and not VIEWS[view].thumbnail]
    sums: list[tuple[str, ...]] = [(base_view, other) for other in others]
    sums += [(base_view, *pair) for pair in itertools.combinations(others, 2)]
    stage4 = list(stage3)
    for combo in sums:
        stage4 += bench.score_all([with_views(leader, combo)], "4 multi-view")
    multi = best(stage4)[0]
    if multi != leader:
        stage4 += bench.score_all(post_grid(multi.parts), "4 multi-view")
    log(f"stage 4: {len(bench.rows)} recipes scored")

    # 5. Graph re-ranking on the three best recipes so far, and on the best that use one view
    # and that keep colour (no greyscale view).
    so_far = list(bench.scored.items())
    finalists = best(stage4, 3)
    finalists += best([pair for pair in so_far if len(pair[0].views) == 1])
    finalists += best([pair for pair in so_far if not any(VIEWS[v].grey for v in pair[0].views)])
    stage5 = list(stage4)
    for recipe in dict.fromkeys(finalists):
        stage5 += bench.score_all(
            [dataclasses.replace(recipe, rerank=rerank) for rerank in RERANKS], "5 re-ranking"
        )
    log(f"stage 5: {len(bench.rows)} recipes scored")

    def leader_of(keep: Callable[[Recipe], bool]) -> Recipe:
        return best([pair for pair in bench.scored.items() if keep(pair[0])])[0]

    def in_colour(recipe: Recipe) -> bool:
        return not any(VIEWS[view].grey for view in recipe.views)

    plain = leader_of(lambda r: r.rerank is None)
    graph = leader_of(lambda r: r.rerank is not None)
    found = {
        "best without graph re-ranking": plain,
        "best with graph re-ranking": graph,
        "best one-view, without re-ranking": leader_of(
            lambda r: r.rerank is None and len(r.views) == 1
        ),
        "best one-view, with re-ranking": leader_of(
            lambda r: r.rerank is not None and len(r.views) == 1
        ),
        "best keeping colour, without re-ranking": leader_of(
            lambda r: r.rerank is None and in_colour(r)
        ),
        "best keeping colour, with re-ranking": leader_of(
            lambda r: r.rerank is not None and in_colour(r)
        ),
    }

    # 6. A projection head trained contrastively on the best plain recipe's features, with
    # the views of each photo as positives (no labels).
    if len(views) > 1:
        ssl_views = [plain.views[0], *(v for v in views if v not in plain.views[:1])]
        ssl_views = [v for v in ssl_views if not VIEWS[v].thumbnail]
        start = time.perf_counter()
        per_view = [
            recipe_vectors(Recipe(with_views(plain, (v,)).parts), bench.store) for v in ssl_views
        ]
        head = train_head(per_view)
        seconds = time.perf_counter() - start
        name = (
            f"{Recipe(plain.parts).label()} | PCA256 whiten | contrastive head 512-128 "
            f"(positives: views {'/'.join(ssl_views)}; {seconds:.0f} s to train)"
        )
        bench.score_lists(
            name,
            neighbour_positions(head, K, None),
            head.shape[1],
            bench.images_per_second(plain.views),
            "6 self-supervised",
            False,
        )
        log(f"stage 6: contrastive head trained in {seconds:.0f} s")
    return found


def default_parts() -> tuple[Part, ...]:
    """The encoder's default before this harness: block5_conv3, global average, 224 stretched."""
    return (Part("b5", "avg", 1.0, ("s224",)),)


# The default the encoder took from an earlier run of this harness: block4_conv3, GeM3, square
# root, 112 stretched, PCA to 64 with half whitening.
SHIPPED = Recipe((Part("b4", "gem", 0.5, ("s112",)),), pca=64, whiten=0.5)


def reference_rows(bench: Bench, pixel_ips: float, positions: np.ndarray) -> None:
    bench.baseline_positions = positions
    bench.score_lists("raw pixels 16x16, centred (baseline)", positions, 768, pixel_ips, "0", False)
    bench.score(Recipe(default_parts(), note="old default"), "0 reference")
    if "s112" in bench.store:
        bench.score(dataclasses.replace(SHIPPED, note="shipped default"), "0 reference")
    if "g112" in bench.store:
        grey = with_views(
            dataclasses.replace(SHIPPED, note="shipped default, grey input"), ("g112",)
        )
        bench.score(grey, "0 reference")
    for view in [view for view in ("s224", "p224") if view in bench.store]:
        parts = tuple(dataclasses.replace(part, views=(view,)) for part in PROBE_PARTS)
        probe = Recipe(parts, pca=128, whiten=1.0, power=0.5, note="hand probe")
        bench.score(dataclasses.replace(probe, rerank=Rerank("aqe", 5, 3.0)), "0 reference")
        bench.score(dataclasses.replace(probe, rerank=Rerank("dba", 5, 3.0)), "0 reference")
        bench.score(probe, "0 reference")


def pixel_positions(paths: Sequence[Path]) -> tuple[np.ndarray, float]:
    from core.neighbours import top_k

    encoder = PixelEncoder(50_000_000)
    start = time.perf_counter()
    vectors = encoder.embed_batch(np.stack([encoder.prepare(path) for path in paths]))
    ips = len(paths) / (time.perf_counter() - start)
    return top_k(vectors, K).positions, ips


def robustness(bench: Bench, recipe: Recipe) -> list[Row]:
    """The winner with PCA fitted on half the catalogue only, on thumbnail-sized inputs, and
    in every other view."""
    rows = []
    plain = recipe.without_rerank()
    if plain.pca:
        half = np.arange(0, len(bench.ids), 2)
        vectors = recipe_vectors(plain, bench.store, fit_rows=half)
        rows.append(
            bench.score_lists(
                recipe.label() + " (PCA fitted on every other product only)",
                neighbour_positions(vectors, K, recipe.rerank),
                vectors.shape[1],
                bench.images_per_second(plain.views),
                "7 robustness",
                recipe.rerank is not None,
            )
        )
    # The photos of fashion-small are 60x80 thumbnails: the same recipe on such inputs.
    thumbnail = "tg112" if any(VIEWS[view].grey for view in recipe.views) else "t112"
    if thumbnail in bench.store:
        rows.append(bench.score(with_views(recipe, (thumbnail,)), "7 robustness"))
    # The same recipe in every view, so that views are compared like for like.
    for view in bench.store:
        rows.append(bench.score(with_views(recipe, (view,)), "7 same recipe, each view"))
    return rows


def fmt(value: float) -> str:
    return f"{value:.3f}"


def ranked(rows: Sequence[Row]) -> list[Row]:
    """The harness's ranking: macro, then micro P@10, best first."""
    return sorted(rows, key=Row.key, reverse=True)


RESULT_COLUMNS = (
    "rank",
    "recipe",
    "micro_p_at_10",
    "macro_p_at_10",
    "map_at_10",
    "colour_p_at_10",
    "dims",
    "images_per_second",
    "graph",
    "stage",
)


def result_cells(rank: int, row: Row) -> list[str]:
    """One row of RESULTS, in RESULT_COLUMNS' order, rounded as QUALITY.md shows it."""
    return [
        str(rank),
        row.recipe,
        fmt(row.micro),
        fmt(row.macro),
        fmt(row.mean_ap),
        fmt(row.colour),
        str(row.dims),
        f"{row.images_per_second:.1f}",
        "yes" if row.graph else "no",
        row.stage,
    ]


def write_results(rows: Sequence[Row], path: Path = RESULTS) -> None:
    """Every scored recipe, ranked, as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RESULT_COLUMNS)
        writer.writerows(result_cells(rank, row) for rank, row in enumerate(ranked(rows), 1))


def table(rows: Sequence[Row], top: int = TOP_ROWS) -> str:
    """The best ``top`` rows of the ranking as a Markdown table."""
    lines = [
        "| # | recipe | micro P@10 | macro P@10 | mAP@10 | colour P@10 | dims | images/s "
        "| graph | stage |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rank, row in enumerate(ranked(rows)[:top], start=1):
        cells = result_cells(rank, row)
        cells[1] = row.recipe.replace("|", "\\|")  # a recipe's steps are joined by " | "
        cells[8] = "yes" if row.graph else ""
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(row: Row, baseline: Row) -> str:
    """Which of the four targets a row meets, e.g. ``missed, missed, +0.150 met, +0.11 missed``."""
    macro_gain, micro_gain = row.macro - baseline.macro, row.micro - baseline.micro
    checks = [
        (f"{row.macro:.3f}", row.macro >= TARGET_MACRO),
        (f"{row.micro:.3f}", row.micro >= TARGET_MICRO),
        (f"{macro_gain:+.3f}", macro_gain >= TARGET_MARGIN),
        (f"{micro_gain:+.3f}", micro_gain >= TARGET_MARGIN),
    ]
    return ", ".join(f"{value} {'met' if ok else 'missed'}" for value, ok in checks)


def highlights(bench: Bench, plain: Recipe) -> str:
    """The best scored recipe for each choice the issue asks about."""

    def one(recipe: Recipe) -> bool:
        return len(recipe.views) == 1 and recipe.rerank is None

    def uses(recipe: Recipe, layer: str, pool: str) -> bool:
        return any(part.layer == layer and part.pool == pool for part in recipe.parts)

    combos = sorted({tuple(p.layer for p in r.parts) for r in bench.scored if len(r.parts) > 1})
    like_plain = {view: with_views(plain, (view,)) for view in bench.store}
    questions: list[tuple[str, str, Callable[[Recipe], bool]]] = [
        *(
            (
                "layer, alone",
                layer,
                lambda r, x=layer: one(r) and len(r.parts) == 1 and r.parts[0].layer == x,
            )
            for layer in LAYERS
        ),
        *(
            (
                "pooling (any recipe using it)",
                f"{layer} {pool}",
                lambda r, x=layer, p=pool: r.rerank is None and uses(r, x, p),
            )
            for layer, pool in itertools.product(("b4", "b5"), POOLS)
        ),
        *(
            (
                "layers concatenated",
                " + ".join(combo),
                lambda r, c=combo: one(r) and tuple(part.layer for part in r.parts) == c,
            )
            for combo in combos
        ),
        *(
            (
                "input view, same layers, pooling and PCA as the best plain recipe",
                f"{view}: {VIEWS[view].describe()}",
                lambda r, x=same: r == x,
            )
            for view, same in like_plain.items()
        ),
        ("post-processing", "L2 only, no PCA", lambda r: r.rerank is None and not r.pca),
        *(
            (
                "post-processing",
                f"PCA{dims} whiten^{whiten:g}",
                lambda r, d=dims, w=whiten: r.rerank is None and r.pca == d and r.whiten == w,
            )
            for dims, whiten in itertools.product((32, 64, 96, 128, 256), (1.0, 0.5))
        ),
        ("views summed", "one view", one),
        ("views summed", "two or three views", lambda r: len(r.views) > 1 and not r.rerank),
        *(
            (
                "graph re-ranking of the best plain recipe",
                kind,
                lambda r, k=kind: (
                    r.without_rerank() == plain and r.rerank is not None and r.rerank.kind == k
                ),
            )
            for kind in ("aqe", "dba", "diffusion")
        ),
        *(
            (
                "graph re-ranking, any recipe",
                kind,
                lambda r, k=kind: r.rerank is not None and r.rerank.kind == k,
            )
            for kind in ("aqe", "dba", "diffusion")
        ),
    ]
    lines = [
        "| question | choice | best recipe with it | micro P@10 | macro P@10 | mAP@10 | images/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for question, choice, keep in questions:
        rows = [row for recipe, row in bench.scored.items() if keep(recipe)]
        if rows:
            row = max(rows, key=Row.key)
            lines.append(
                f"| {question} | {choice} | {row.recipe} | {fmt(row.micro)} | "
                f"{fmt(row.macro)} | {fmt(row.mean_ap)} | {row.images_per_second:.1f} |"
            )
    for row in bench.rows:
        if row.stage.startswith("6"):
            lines.append(
                f"| self-supervised head | contrastive | {row.recipe} | {fmt(row.micro)} | "
                f"{fmt(row.macro)} | {fmt(row.mean_ap)} | {row.images_per_second:.1f} |"
            )
    return "\n".join(lines)


def half_macros(bench: Bench, positions: np.ndarray) -> tuple[float, float]:
    """Macro P@10 over the even and over the odd queries: how much a difference can be noise."""
    lists = as_lists(positions, bench.ids)
    return tuple(  # type: ignore[return-value]
        evaluate_lists(
            "", {pid: lists[pid] for pid in bench.ids[first::2]}, bench.labels, LABEL, K
        ).macro_precision
        for first in (0, 1)
    )


def recipe_positions(bench: Bench, recipe: Recipe) -> np.ndarray:
    vectors = recipe_vectors(recipe, bench.store, cache=bench.pca_cache)
    return neighbour_positions(vectors, K, recipe.rerank)


def summary(
    bench: Bench, found: dict[str, Recipe], ceiling: float, seconds: float, command: str
) -> str:
    baseline = next(row for row in bench.rows if row.recipe.startswith("raw pixels"))
    default = next(row for row in bench.rows if "old default" in row.recipe)
    probes = [(r, row) for r, row in bench.scored.items() if "hand probe" in row.recipe]
    probe_recipe, probe = max(probes, key=lambda pair: pair[1].key())
    headline: list[tuple[str, Row, np.ndarray]] = [
        ("baseline", baseline, bench.baseline_positions),
        ("old default", default, recipe_positions(bench, Recipe(default_parts()))),
        ("hand probe, best form", probe, recipe_positions(bench, probe_recipe)),
    ]
    if SHIPPED in bench.scored:
        headline.append(
            ("shipped default", bench.scored[SHIPPED], recipe_positions(bench, SHIPPED))
        )
    headline += [
        (title, bench.scored[recipe], recipe_positions(bench, recipe))
        for title, recipe in found.items()
    ]
    cached = (
        f" ({bench.cached_views} read from the cache, timed when they were computed)"
        if bench.cached_views
        else ""
    )
    lines = [
        f"Generated by `{command}` on {datetime.date.today()} (commit {commit()}), "
        f"{machine()}; {len(bench.ids)} photos, {len(bench.rows)} rows. Trunk passes over "
        f"{len(bench.store)} views{cached}: {bench.pass_seconds / 60:.1f} minutes; this run "
        f"in all: {seconds / 60:.1f} minutes. images/s is the trunk alone (model calls, one "
        "view); a recipe summing views pays for each.",
        "",
        "| | recipe | micro P@10 | macro P@10 | mAP@10 | colour P@10 | macro, even / odd "
        "queries | dims | images/s | targets (macro >= 0.45, micro >= 0.80, each >= baseline "
        "+ 0.15) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for title, row, positions in headline:
        even, odd = half_macros(bench, positions)
        lines.append(
            f"| {title} | {row.recipe} | {fmt(row.micro)} | {fmt(row.macro)} | "
            f"{fmt(row.mean_ap)} | {fmt(row.colour)} | {fmt(even)} / {fmt(odd)} | {row.dims} | "
            f"{row.images_per_second:.1f} | "
            f"{verdict(row, baseline) if row is not baseline else ''} |"
        )
    plain = bench.scored[found["best without graph re-ranking"]]
    graph = bench.scored[found["best with graph re-ranking"]]
    lines += [
        "",
        f"Ceiling of macro P@10 on this catalogue (articleTypes with fewer than 11 products "
        f"cannot fill ten places): {ceiling:.3f}.",
        "",
        "Precision@10 per articleType:",
        "",
        "| articleType | products | raw pixels | old default | best plain | best with graph |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, size in Counter(bench.labels.values()).most_common():
        cells = " | ".join(
            fmt(row.per_label.get(label, 0.0)) for row in (baseline, default, plain, graph)
        )
        lines.append(f"| {label} | {size} | {cells} |")
    lines += [
        "",
        "Most frequent wrong neighbours of the best plain recipe (share of the ten places):",
    ]
    winner = recipe_positions(bench, found["best without graph re-ranking"])
    lines += ["", *confusions(winner, bench.ids, bench.labels)]
    return "\n".join(lines)


def confusions(
    positions: np.ndarray, ids: Sequence[str], labels: dict[str, str], top: int = 12
) -> list[str]:
    """The commonest (query label, wrong neighbour label) pairs, as markdown list lines."""
    pairs: Counter[tuple[str, str]] = Counter()
    slots: Counter[str] = Counter()
    for query, row in zip(ids, positions, strict=True):
        label = labels.get(query)
        if label is None:
            continue
        slots[label] += K
        for pos in row:
            other = labels.get(ids[pos]) if pos >= 0 else None
            if other is not None and other != label:
                pairs[(label, other)] += 1
    return [
        f"- {label} -> {other}: {count} of {slots[label]} ({count / slots[label]:.0%})"
        for (label, other), count in pairs.most_common(top)
    ]


def macro_ceiling(labels: dict[str, str]) -> float:
    sizes = list(Counter(labels.values()).values())
    return float(np.mean([min(K, size - 1) / K for size in sizes]))


def write_quality(text: str) -> None:
    block = f"{START}\n{text}\n{END}"
    empty = f"# Retrieval quality\n\n{START}\n{END}\n"
    current = QUALITY.read_text() if QUALITY.is_file() else empty
    head, _, rest = current.partition(START)
    _, _, tail = rest.partition(END)
    QUALITY.write_text(head + block + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="300 photos; QUALITY.md and the CSV untouched"
    )
    parser.add_argument("--images", type=int, default=0, help="first N photos (0: all)")
    parser.add_argument("--data", type=Path, help="an unpacked fashion-dev folder")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lookalike-quality"))
    parser.add_argument(
        "--views", default=",".join(DEFAULT_VIEWS), help=f"comma-separated, of {', '.join(VIEWS)}"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="leave QUALITY.md and the CSV untouched"
    )
    parser.add_argument("--record", action="store_true", help="append a summary to BENCHMARKS.md")
    args = parser.parse_args()
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {text}", flush=True)

    folder = args.data or unpacked("fashion-dev", args.cache / "data")
    items = sorted(read_catalogue(folder).items, key=lambda item: item.product_id)
    count = 300 if args.quick and not args.images else args.images
    if count:
        # An even spread over the sorted ids keeps the label mix of the whole catalogue.
        items = [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]
    ids = [item.product_id for item in items]
    paths = [item.path for item in items]
    labels = {item.product_id: str(item.meta[LABEL]) for item in items if item.meta.get(LABEL)}
    colours = {item.product_id: str(item.meta[COLOUR]) for item in items if item.meta.get(COLOUR)}
    bench = Bench(ids, labels, colours)
    log(f"{len(ids)} photos from {folder}, {len(set(labels.values()))} articleTypes")

    trunk: list[Any] = []

    def get_trunk() -> Any:
        if not trunk:
            trunk.append(build_trunk())
        return trunk[0]

    views = [view for view in args.views.split(",") if view]
    for name in views:
        bench.add_view(cached_features(args.cache, VIEWS[name], ids, paths, get_trunk, log))
    log("features ready: " + ", ".join(f"{v} {bench.speed[v]:.1f}/s" for v in views))

    positions, pixel_ips = pixel_positions(paths)
    reference_rows(bench, pixel_ips, positions)
    found = search(bench, views, log)
    robustness(bench, found["best with graph re-ranking"])
    robustness(bench, found["best without graph re-ranking"])
    seconds = time.perf_counter() - started

    command = "python bench/quality/quality.py" + (" --quick" if args.quick else "")
    if args.images:
        command += f" --images {args.images}"
    text = summary(bench, found, macro_ceiling(labels), seconds, command)
    choices = highlights(bench, found["best without graph re-ranking"])
    full = (
        f"{text}\n\nThe best recipe for each choice:\n\n{choices}\n\n"
        f"The best {min(TOP_ROWS, len(bench.rows))} of the {len(bench.rows)} recipes scored, "
        f"by macro then micro P@10 (every one, with the same columns, in "
        f"`{RESULTS.relative_to(ROOT)}`):\n\n{table(bench.rows)}"
    )
    print(full)
    log(f"done in {seconds / 60:.1f} minutes")
    if not (args.quick or args.no_write):
        write_quality(full)
        write_results(bench.rows)
    if args.record:
        record(f"Retrieval quality on fashion-dev, {len(ids)} photos", text)


if __name__ == "__main__":
    main()
