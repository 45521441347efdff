"""The ``lookalike`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session
from tqdm import tqdm

from core.catalogue import Catalogue, read_catalogue
from core.db import make_engine, make_sessionmaker, upgrade
from core.errors import LookalikeError
from core.indexing import IndexSummary, index_catalogue, similar_products
from core.jobs import create_job, finish_job
from core.settings import Settings, get_settings


class LookalikeGroup(click.Group):
    """Turns domain errors into one clear line and exit status 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LookalikeError as exc:
            raise click.ClickException(exc.message) from exc


@click.group(cls=LookalikeGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Lookalike: visual-similarity search for product catalogues."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = get_settings()


@main.command()
@click.argument(
    "path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--stored", is_flag=True, help="Index the products already in the database.")
@click.option(
    "--refit",
    is_flag=True,
    help="Fit the catalogue's PCA projection again (LOOKALIKE_PCA_DIMS) and rebuild.",
)
@click.pass_obj
def index(settings: Settings, path: Path | None, stored: bool, refit: bool) -> None:
    """Index the catalogue in PATH (Kaggle layout or a folder of images), or with --stored
    the products already registered (after changing the model, say).

    Runs again safely: products already embedded with the current model are skipped and only
    neighbour lists that change are rewritten.
    """
    from core.encoder import load_encoder

    if (path is None) == (not stored):
        raise click.UsageError("give either PATH or --stored")
    upgrade(settings.database_url)
    if stored:
        catalogue = _stored_catalogue(settings)
    else:
        assert path is not None
        catalogue = read_catalogue(path)
    for problem in catalogue.problems():
        click.echo(f"note: {problem}", err=True)
    click.echo(f"{len(catalogue.items)} photos in {catalogue.root} ({catalogue.layout} layout)")

    if settings.broker_url:
        _index_on_workers(settings, catalogue, refit)
        return
    encoder = load_encoder(settings)
    click.echo(f"model {encoder.model_id}")
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        job = create_job(session, "index", {"path": str(catalogue.root)})
        session.commit()
        steps = index_catalogue(
            session,
            encoder,
            catalogue.items,
            k=settings.neighbours,
            block_size=settings.block_size,
            batch_size=settings.batch_size,
            workers=settings.decode_workers,
            job=job,
            pca_dims=settings.pca_dims,
            pca_power=settings.pca_power,
            pca_whiten=settings.pca_whiten,
            refit=refit,
        )
        bar: tqdm[Any] | None = None
        try:
            for step in steps:
                session.commit()
                if isinstance(step, IndexSummary):
                    _print_summary(step)
                elif step.stage == "products":
                    bar = tqdm(total=job.total, unit="img", desc="embedding", file=sys.stderr)
                elif step.stage == "embedding" and bar is not None:
                    bar.update(step.step)
                    bar.set_postfix(failed=step.failed, refresh=False)
        except BaseException as exc:
            session.rollback()
            finish_job(job, error=f"interrupted: {type(exc).__name__}: {exc}")
            session.commit()
            raise
        finally:
            if bar is not None:
                bar.close()


def _stored_catalogue(settings: Settings) -> Catalogue:
    from core.indexing import stored_items

    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        return Catalogue(
            root=Path(settings.database_url), layout="stored", items=stored_items(session)
        )


def _index_on_workers(settings: Settings, catalogue: Catalogue, refit: bool) -> None:
    """Register the products here, then let the workers embed them chunk by chunk while a
    progress bar follows the job in the jobs table."""
    from core.indexing import sync_products
    from core.services import plan_chunks
    from worker.app import create_celery

    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        job = create_job(session, "index", {"path": str(catalogue.root), "refit": refit})
        synced = sync_products(session, catalogue.items)
        chunks = plan_chunks(
            session, job, [item.product_id for item in catalogue.items], settings.chunk_size
        )
        session.commit()
        click.echo(
            f"products: {synced.added} new, {synced.changed} changed, {synced.unchanged} "
            f"unchanged; job {job.id} queued as {chunks} chunks on {settings.broker_url}"
        )
        celery = create_celery(settings)
        for number in range(chunks):
            celery.send_task("lookalike.index_chunk", args=[job.id, number])
        _follow(session, job.id)


def _follow(session: Session, job_id: str, poll: float = 0.5) -> None:
    """Show a job's progress from the jobs table until it ends; exit 1 if it failed."""
    from core.services import get_job

    with tqdm(unit="img", desc="embedding", file=sys.stderr) as bar:
        while True:
            session.expire_all()
            job = get_job(session, job_id)
            bar.total = job.total
            bar.n = job.done
            bar.set_postfix(state=job.state, refresh=False)
            bar.refresh()
            if job.state in ("succeeded", "failed"):
                break
            time.sleep(poll)
        session.commit()
    if job.state == "failed":
        raise click.ClickException(f"job {job_id} failed: {job.error}")
    click.echo(f"job {job_id} succeeded: {json.dumps(job.result)}")


def _print_summary(summary: IndexSummary) -> None:
    products = summary.products
    click.echo(
        f"products: {products.added} new, {products.changed} changed, "
        f"{products.unchanged} unchanged; embedded {summary.embedded}, "
        f"skipped {summary.skipped} already embedded, {summary.failed} failed; "
        f"{summary.lists_written} neighbour lists written"
    )
    click.echo(f"lists built in {summary.model_id}")
    if summary.failed:
        click.echo("failed images are listed with: lookalike errors", err=True)


@main.command()
@click.argument("product_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def similar(settings: Settings, product_id: str, as_json: bool) -> None:
    """Show the products that look most like PRODUCT_ID, with their scores."""
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        product, neighbours = similar_products(session, product_id)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "product": {"id": product.id, **(product.meta or {})},
                        "neighbours": [
                            {
                                "rank": n.rank,
                                "id": n.product.id,
                                "score": round(n.score, 6),
                                **(n.product.meta or {}),
                            }
                            for n in neighbours
                        ],
                    },
                    indent=2,
                )
            )
            return
        click.echo(f"{product.id}  {product.name or ''}".rstrip())
        for n in neighbours:
            click.echo(f"{n.rank:>3}  {n.score:.4f}  {n.product.id:<12} {n.product.name or ''}")


@main.command()
@click.option("--job", "job_id", help="Only this job's errors.")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def errors(settings: Settings, job_id: str | None, limit: int) -> None:
    """List photos that could not be indexed, and why."""
    from sqlalchemy import select

    from core.models import ImageError

    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        query = select(ImageError).order_by(ImageError.id.desc()).limit(limit)
        if job_id:
            query = query.where(ImageError.job_id == job_id)
        for error in session.scalars(query):
            click.echo(f"{error.product_id}\t{error.path}\t{error.message}")


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def jobs(settings: Settings, limit: int) -> None:
    """List recent jobs with their state and progress."""
    from core.jobs import recent_jobs

    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        click.echo(f"{'job':36}  {'kind':14} {'state':10} {'progress':>13}  created")
        for job in recent_jobs(session, limit):
            progress = f"{job.done}/{job.total}"
            created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{job.id:36}  {job.kind:14} {job.state:10} {progress:>13}  {created}")
            if job.error:
                click.echo(f"  error: {job.error}")


@main.command()
@click.option("--concurrency", "-c", default=1, show_default=True, help="Worker processes.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_obj
def worker(settings: Settings, concurrency: int, loglevel: str) -> None:
    """Start a Celery worker (each process loads the model once, at start)."""
    from worker.app import create_celery

    upgrade(settings.database_url)
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={settings.queue}",
        ]
    )


def gunicorn_options(workers: int, threads: int, access_log: bool) -> list[str]:
    """gunicorn's options for `lookalike serve` (bench/read_path.py serves its ceiling with
    the same)."""
    # gthread, not sync: a sync worker closes the connection after every response, so a
    # client (or proxy) pays a new TCP connection per request; gthread keeps it alive.
    options = ["--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads)]
    if access_log:
        options += ["--access-logfile", "-"]
    return options


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option(
    "--workers", "-w", default=3, show_default=True, help="gunicorn processes (about cores + 1)."
)
@click.option(
    "--threads",
    default=2,
    show_default=True,
    help="Threads per process; each serves one request at a time, on kept-alive connections.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per request on stdout.",
)
@click.pass_obj
def serve(settings: Settings, bind: str, workers: int, threads: int, access_log: bool) -> None:
    """Serve the web app and API under gunicorn."""
    upgrade(settings.database_url)
    options = gunicorn_options(workers, threads, access_log)
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "gunicorn", *options, "--bind", bind, "web:create_app()"],
    )


@main.command()
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
    from core.evaluation import (
        evaluate_lists,
        pixel_vectors,
        product_labels,
        stored_lists,
        vector_lists,
    )

    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        labels = product_labels(session, label_column)
        if not labels:
            raise click.ClickException(f"no product has a {label_column!r} value")
        lists, models = stored_lists(session)
        if not lists:
            raise click.ClickException("the neighbour table is empty: run lookalike index first")
        if max(len(v) for v in lists.values()) < k:
            raise click.ClickException(f"the stored lists are shorter than k={k}")
        results = [evaluate_lists(", ".join(sorted(models)), lists, labels, label_column, k)]
        if baseline:
            pixels = pixel_vectors(
                session, sorted(lists), settings.max_image_pixels, settings.decode_workers
            )
            results.append(
                evaluate_lists(
                    "raw pixels 16x16, centred",
                    vector_lists(pixels, k, settings.block_size),
                    labels,
                    label_column,
                    k,
                )
            )
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    click.echo(
        f"{'recipe':64} {'micro P@' + str(k):>10} {'macro P@' + str(k):>10} "
        f"{'mAP@' + str(k):>8} {'queries':>8}"
    )
    for r in results:
        click.echo(
            f"{r.name[:64]:64} {r.micro_precision:10.3f} {r.macro_precision:10.3f} "
            f"{r.mean_average_precision:8.3f} {r.queries:8d}"
        )
    click.echo(
        f"\n{label_column:24} {'products':>8} "
        + " ".join(
            f"{('P@' + str(k) + ' ' + name)[:14]:>14}"
            for name in ("stored", "pixels")[: len(results)]
        )
    )
    baseline_by_label = (
        {s.label: s.precision for s in results[1].per_label} if len(results) > 1 else {}
    )
    for score in results[0].per_label:
        row = f"{score.label[:24]:24} {score.products:8d} {score.precision:14.3f}"
        if baseline_by_label:
            row += f" {baseline_by_label.get(score.label, 0.0):14.3f}"
        click.echo(row)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


if __name__ == "__main__":
    main()
