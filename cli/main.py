"""The ``lookalike`` command: its group, the one place domain errors become messages, and the
commands that are one call each (``index`` and ``evaluate`` have modules of their own)."""

from __future__ import annotations

import json
import logging
import os
import sys

import click
from sqlalchemy import select

from cli.evaluate import evaluate
from cli.index import index
from cli.session import sessions
from core.errors import LookalikeError
from core.jobs import recent_jobs
from core.lookalikes import similar_products
from core.models import ImageError
from core.settings import Settings, get_settings
from migrations import upgrade


class LookalikeGroup(click.Group):
    """Turns domain errors into one clear line and their exit status, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LookalikeError as exc:
            raise _DomainError(exc) from exc


class _DomainError(click.ClickException):
    """A domain error as click shows it: its command-line message and exit status."""

    def __init__(self, error: LookalikeError) -> None:
        super().__init__(error.cli_message())
        self.exit_code = error.exit_code  # type: ignore[misc]


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


main.add_command(index)
main.add_command(evaluate)


@main.command()
@click.argument("product_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def similar(settings: Settings, product_id: str, as_json: bool) -> None:
    """Show the products that look most like PRODUCT_ID, with their scores."""
    with sessions(settings) as session:
        product, neighbours = similar_products(session, product_id)
    if as_json:
        body = {
            "product": {"id": product.id, **(product.meta or {})},
            "neighbours": [
                {"rank": n.rank, "id": n.product.id, "score": round(n.score, 6), **n.product.meta}
                for n in neighbours
            ],
        }
        click.echo(json.dumps(body, indent=2))
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
    query = select(ImageError).order_by(ImageError.id.desc()).limit(limit)
    if job_id:
        query = query.where(ImageError.job_id == job_id)
    with sessions(settings) as session:
        for error in session.scalars(query):
            click.echo(f"{error.product_id}\t{error.path}\t{error.message}")


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def jobs(settings: Settings, limit: int) -> None:
    """List recent jobs with their state and progress."""
    with sessions(settings) as session:
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
    """gunicorn's options for `lookalike serve` (bench/perf/read_path.py serves its ceiling with
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
