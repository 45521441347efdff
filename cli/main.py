"""The ``lookalike`` command: its group, the one place domain errors become messages, and the
commands that are one call each (``index`` and ``evaluate`` have modules of their own)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.evaluate import evaluate
from cli.index import index
from cli.session import sessions
from core import logs, partition
from core.errors import JobNotFound, LookalikeError
from core.jobs import recent_jobs
from core.lookalikes import similar_products
from core.models import ImageError, Job
from core.settings import Settings, get_settings
from core.twins import photo_groups
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
    settings = get_settings()
    logs.configure(settings.log_format, logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = settings


main.add_command(index)
main.add_command(evaluate)


@main.command()
@click.argument("product_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def similar(settings: Settings, product_id: str, as_json: bool) -> None:
    """Show the products that look most like PRODUCT_ID, with their scores."""
    with sessions(settings) as session:
        found = similar_products(session, product_id)
    product, neighbours, same_photo = found.product, found.stored.neighbours, found.same_photo
    grouping = found.stored.partition
    if as_json:
        body: dict[str, object] = {
            "product": {**(product.meta or {}), "id": product.id},
            "neighbours": [
                {**n.product.meta, "rank": n.rank, "id": n.product.id, "score": round(n.score, 6)}
                for n in neighbours
            ],
        }
        if same_photo:
            body["same_photo_as"] = [{**t.meta, "id": t.id} for t in same_photo]
        if grouping:
            body["grouping"] = partition.described(grouping, product.meta)
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{product.id}  {product.name or ''}".rstrip())
    if grouping:
        group = partition.described(grouping, product.meta)["group"]
        click.echo("     within " + ", ".join(f"{c} = {v}" for c, v in group.items()))
    if same_photo:
        click.echo(f"     same photo as {', '.join(t.id for t in same_photo)}")
    for n in neighbours:
        click.echo(f"{n.rank:>3}  {n.score:.4f}  {n.product.id:<12} {n.product.name or ''}")


@main.command("same-photos")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.pass_obj
def same_photos(settings: Settings, as_json: bool) -> None:
    """List the groups of products filed with the very same photo (one per line, first id
    first). Only the first of a group takes places in lookalike lists; the others show its
    list and name the group as "same photo as"."""
    with sessions(settings) as session:
        groups = photo_groups(session)
    if as_json:
        click.echo(json.dumps({"groups": groups}, indent=2))
        return
    for group in groups:
        click.echo(" ".join(group))
    click.echo(f"{len(groups)} groups, {sum(len(g) for g in groups)} products", err=True)


@main.command()
@click.option("--job", "job_id", help="Only this job's errors.")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def errors(settings: Settings, job_id: str | None, limit: int) -> None:
    """List photos that could not be indexed, and why. JOB may be the short id `jobs` and
    the jobs page show: any unambiguous start of it."""
    query = select(ImageError).order_by(ImageError.id.desc()).limit(limit)
    with sessions(settings) as session:
        if job_id:
            job_id = job_by_prefix(session, job_id)
            query = query.where(ImageError.job_id == job_id)
        found = list(session.scalars(query))
    for error in found:
        click.echo(f"{error.product_id}\t{error.path}\t{error.message}")
    if not found:
        where = f"job {job_id}" if job_id else "any job"
        click.echo(f"no image errors recorded for {where}", err=True)


def job_by_prefix(session: Session, prefix: str) -> str:
    """The id of the one job whose id starts with ``prefix``.

    Raises:
        JobNotFound: no job's id starts so, or several do.
    """
    prefix = prefix.strip().lower()
    found = (
        []
        if not prefix
        else session.scalars(
            select(Job.id).where(Job.id.startswith(prefix, autoescape=True)).limit(2)
        ).all()
    )
    if len(found) != 1:
        error = JobNotFound(prefix)
        if found:
            error.message = f"several jobs have ids starting with {prefix!r}: give more of it"
        raise error
    return found[0]


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


WORKER_NICENESS = 10


@main.command()
@click.option("--concurrency", "-c", default=1, show_default=True, help="Worker processes.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--metrics-port",
    default=0,
    show_default=True,
    help="Serve Prometheus metrics of this worker's processes on this port (0: off).",
)
@click.option(
    "--embed-only",
    is_flag=True,
    help="Take only index jobs' embedding chunks (LOOKALIKE_EMBED_QUEUE): a GPU worker.",
)
@click.option(
    "--nice",
    default=WORKER_NICENESS,
    show_default=True,
    type=click.IntRange(0, 19),
    help="Raise this worker's CPU niceness by this much, so that on cores it shares with "
    "`lookalike serve` the reads go first (0: as started).",
)
@click.pass_obj
def worker(
    settings: Settings,
    concurrency: int,
    loglevel: str,
    metrics_port: int,
    embed_only: bool,
    nice: int,
) -> None:
    """Start a Celery worker (each process loads the model once, at start)."""
    from worker.app import create_celery, worker_queues

    if nice:
        # Before the pool forks: every process of this worker inherits it. Embedding and
        # builds are throughput work; a read waiting behind them is what a shopper notices
        # (BENCHMARKS.md: p99 of the read path while an add job runs, with and without).
        os.nice(nice)

    queues = worker_queues(settings, embed_only)
    if metrics_port:
        from prometheus_client import start_http_server

        from core import metrics

        fresh_metrics_dir()  # before any pool process counts anything
        start_http_server(metrics_port, registry=metrics.registry())
    upgrade(settings.database_url)
    app = create_celery(settings)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={','.join(queues)}",
        ]
    )


WORKER_CLASSES = ("gevent", "gthread")


def gunicorn_options(
    worker_class: str, workers: int, threads: int, connections: int, access_log: bool
) -> list[str]:
    """gunicorn's options for `lookalike serve` (bench/perf/read_path.py serves its ceiling with
    the same)."""
    # gevent by default: each connection is a greenlet, so a client that sends its body at a
    # byte a second holds a few kilobytes, not one of the few request threads (gthread hands a
    # connection to a thread as soon as its first byte arrives, and the thread then waits for
    # the rest). psycopg 3 waits cooperatively once gevent has patched the process. Both keep
    # connections alive (a sync worker closes each after one response).
    options = ["--config", "python:cli.gunicorn_config"]
    options += ["--worker-class", worker_class, "--workers", str(workers)]
    if worker_class == "gevent":
        options += ["--worker-connections", str(connections)]
    else:
        options += ["--threads", str(threads)]
    if access_log:
        options += ["--access-logfile", "-"]
    return options


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option(
    "--workers", "-w", default=3, show_default=True, help="gunicorn processes (about cores + 1)."
)
@click.option(
    "--worker-class",
    type=click.Choice(WORKER_CLASSES),
    default="gevent",
    show_default=True,
    help="gevent: one greenlet per connection, so slow clients hold no thread; gthread: a "
    "pool of --threads threads per process (put a buffering proxy such as nginx in front).",
)
@click.option(
    "--connections",
    default=1000,
    show_default=True,
    help="gevent: most connections one process holds at once.",
)
@click.option(
    "--threads",
    default=2,
    show_default=True,
    help="gthread: threads per process; each serves one request at a time.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per request on stdout.",
)
@click.option(
    "--open-writes",
    is_flag=True,
    help="Bind a non-loopback address without LOOKALIKE_API_TOKEN: anyone who can reach it "
    "may add and delete products.",
)
@click.pass_obj
def serve(
    settings: Settings,
    bind: str,
    workers: int,
    worker_class: str,
    connections: int,
    threads: int,
    access_log: bool,
    open_writes: bool,
) -> None:
    """Serve the web app and API under gunicorn.

    Beyond this machine (a --bind that is not loopback), the write endpoints need
    LOOKALIKE_API_TOKEN; --open-writes serves them open anyway, with a warning.
    """
    if not settings.api_token and not is_loopback_bind(bind):
        if not open_writes:
            raise click.UsageError(
                f"--bind {bind} is reachable from other machines and LOOKALIKE_API_TOKEN is "
                "not set, so anyone could add or delete products: set the token, bind "
                "127.0.0.1, or pass --open-writes to serve the write endpoints open anyway"
            )
        click.secho(
            f"WARNING: serving {bind} with open write endpoints (no LOOKALIKE_API_TOKEN): "
            "anyone who can reach it may add and delete products",
            err=True,
            fg="red",
            bold=True,
        )
    upgrade(settings.database_url)
    options = gunicorn_options(worker_class, workers, threads, connections, access_log)
    # One /metrics for all gunicorn workers: each writes its values here (core.metrics).
    fresh_metrics_dir()
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "gunicorn", *options, "--bind", bind, "web:create_app()"],
    )


def fresh_metrics_dir() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` for the processes this command starts: the operator's,
    emptied, or a new temporary folder."""
    import shutil
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
    else:
        folder = tempfile.mkdtemp(prefix="lookalike-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    # prometheus_client picks its value store when first imported (this command's imports did
    # that already): pick again, so metrics made from now on, here and in forks, write there.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return folder


def is_loopback_bind(bind: str) -> bool:
    """Whether a gunicorn ``--bind`` (``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH``) is reachable
    from this machine only. A host name other than localhost counts as reachable."""
    if bind.startswith(("unix:", "fd://")):
        return True
    if bind.startswith("["):
        host = bind[1:].partition("]")[0]
    else:
        host = bind.rpartition(":")[0] if ":" in bind else bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
