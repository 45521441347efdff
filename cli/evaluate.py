"""``lookalike evaluate``: the stored neighbour table scored against a label column, beside a
raw-pixel baseline run through the same neighbour code (labels are only the yardstick)."""

from __future__ import annotations

import json

import click
from sqlalchemy.orm import Session

from cli.session import sessions
from core.evaluation import (
    Evaluation,
    evaluate_lists,
    pixel_vectors,
    product_labels,
    stored_lists,
    vector_lists,
)
from core.settings import Settings

BASELINE = "raw pixels 16x16, centred"


@click.command()
@click.option(
    "--label",
    "label_column",
    default="articleType",
    show_default=True,
    help="Metadata column to score against (e.g. articleType, baseColour).",
)
@click.option("--k", default=10, show_default=True, help="Neighbours scored per query.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also score raw pixels (16x16 thumbnails) with the same neighbour code.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def evaluate(settings: Settings, label_column: str, k: int, baseline: bool, as_json: bool) -> None:
    """Score the stored neighbour table against a label column: precision@k, mAP."""
    with sessions(settings) as session:
        results = _evaluations(session, settings, label_column, k, baseline)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    _print_summary(results, k)
    _print_per_label(results, label_column, k)


def _evaluations(
    session: Session, settings: Settings, label_column: str, k: int, baseline: bool
) -> list[Evaluation]:
    """The stored lists' scores, then the baseline's (when asked for)."""
    labels = product_labels(session, label_column)
    if not labels:
        raise click.ClickException(f"no product has a {label_column!r} value")
    lists, spaces = stored_lists(session)
    if not lists:
        raise click.ClickException("the neighbour table is empty: run lookalike index first")
    if max(len(v) for v in lists.values()) < k:
        raise click.ClickException(f"the stored lists are shorter than k={k}")
    results = [evaluate_lists(", ".join(sorted(spaces)), lists, labels, label_column, k)]
    if baseline:
        pixels = pixel_vectors(
            session, sorted(lists), settings.max_image_pixels, settings.decode_workers
        )
        pixel_lists = vector_lists(pixels, k, settings.block_size)
        results.append(evaluate_lists(BASELINE, pixel_lists, labels, label_column, k))
    return results


def _print_summary(results: list[Evaluation], k: int) -> None:
    click.echo(
        f"{'recipe':64} {'micro P@' + str(k):>10} {'macro P@' + str(k):>10} "
        f"{'mAP@' + str(k):>8} {'queries':>8}"
    )
    for r in results:
        click.echo(
            f"{r.name[:64]:64} {r.micro_precision:10.3f} {r.macro_precision:10.3f} "
            f"{r.mean_average_precision:8.3f} {r.queries:8d}"
        )


def _print_per_label(results: list[Evaluation], label_column: str, k: int) -> None:
    """Precision per label value: the stored lists' and, beside them, the baseline's."""
    names = ("stored", "pixels")[: len(results)]
    click.echo(
        f"\n{label_column:24} {'products':>8} "
        + " ".join(f"{('P@' + str(k) + ' ' + name)[:14]:>14}" for name in names)
    )
    baseline = {s.label: s.precision for s in results[1].per_label} if len(results) > 1 else {}
    for score in results[0].per_label:
        row = f"{score.label[:24]:24} {score.products:8d} {score.precision:14.3f}"
        if baseline:
            row += f" {baseline.get(score.label, 0.0):14.3f}"
        click.echo(row)
