"""``lookalike index``: a catalogue folder (or the stored products) in, neighbour table out.

The same job either way: submitted here, its steps run in this process without a broker
(``cli.in_process``) or on the workers with one, followed here in both cases through the jobs
table, then summarised from the job's result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from sqlalchemy.orm import Session

from cli.in_process import index_catalogue
from cli.progress import Progress
from cli.session import command_context, sessions
from core.catalogue import Catalogue, read_catalogue
from core.context import Context
from core.index_summary import IndexSummary
from core.jobs import JobState, fail_job, get_job, state_of
from core.models import Job
from core.products import stored_items
from core.settings import Settings
from core.submissions import submit_index
from migrations import upgrade


@click.command()
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
    if (path is None) == (not stored):
        raise click.UsageError("give either PATH or --stored")
    upgrade(settings.database_url)
    catalogue = _catalogue(settings, path)
    context = command_context(settings)
    try:
        with context.session() as session:
            if settings.broker_url:
                job = _run_on_workers(context, session, catalogue, refit)
            else:
                job = _run_here(context, session, catalogue, refit)
    finally:
        context.close()
    _print_summary(job)


def _catalogue(settings: Settings, path: Path | None) -> Catalogue:
    """The folder's catalogue (its problems printed), or the products already stored."""
    if path is None:
        with sessions(settings) as session:
            items = stored_items(session)
        catalogue = Catalogue(root=Path(settings.database_url), layout="stored", items=items)
    else:
        catalogue = read_catalogue(path)
    for problem in catalogue.problems():
        click.echo(f"note: {problem}", err=True)
    click.echo(f"{len(catalogue.items)} photos in {catalogue.root} ({catalogue.layout} layout)")
    return catalogue


def _run_here(context: Context, session: Session, catalogue: Catalogue, refit: bool) -> Job:
    """The embedded default: every step in this process, a progress bar after each batch."""
    click.echo(f"model {context.encoder.model_id}")
    job: Job | None = None
    bar = Progress("indexing")
    try:
        for job in index_catalogue(
            context, session, catalogue.items, source=str(catalogue.root), refit=refit
        ):
            bar.update(job.done, job.total)
    except BaseException as exc:
        session.rollback()
        if job is not None:
            fail_job(session, job.id, f"interrupted: {type(exc).__name__}: {exc}")
            session.commit()
        raise
    finally:
        bar.close()
    assert job is not None, "index_catalogue yields the job first"
    return job


def _run_on_workers(context: Context, session: Session, catalogue: Catalogue, refit: bool) -> Job:
    """Register the products here, let the workers embed them chunk by chunk, and follow the
    job's progress in the jobs table."""
    job, synced = submit_index(
        context, session, catalogue.items, source=str(catalogue.root), refit=refit
    )
    click.echo(
        f"products: {synced.added} new, {synced.changed} changed, {synced.unchanged} "
        f"unchanged; job {job.id} queued on {context.settings.broker_url}"
    )
    # The products registered are not needed to follow the job: let them go, rather than
    # expire a million objects at every poll (a third of a core, beside the workers).
    session.expunge_all()
    return _follow(session, job.id)


def _follow(session: Session, job_id: str, poll: float = 0.5) -> Job:
    """Show a job's progress from the jobs table until it ends."""
    bar = Progress("indexing")
    try:
        while True:
            session.expire_all()
            job = get_job(session, job_id)
            bar.update(job.done, job.total, state_of(job).shown)
            if state_of(job).finished:
                break
            time.sleep(poll)
        session.commit()
    finally:
        bar.close()
    return job


def _print_summary(job: Job) -> None:
    """What the job did; exit 1 if it failed."""
    if state_of(job) is JobState.FAILED:
        raise click.ClickException(f"job {job.id} failed: {job.error}")
    summary = IndexSummary.of(job)
    products = summary.products
    click.echo(
        f"products: {products.added} new, {products.changed} changed, "
        f"{products.unchanged} unchanged; embedded {summary.embedded}, "
        f"skipped {summary.skipped} already embedded, {summary.failed} failed; "
        f"{summary.lists_written} neighbour lists written"
    )
    click.echo(f"lists built in {summary.space_id} ({summary.search})")
    click.echo(f"job {job.id} succeeded: {json.dumps(job.result)}")
    if summary.failed:
        click.echo("failed images are listed with: lookalike errors", err=True)
