"""Shared bits of the benchmark scripts: where data is, and how results are recorded."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def unpacked(name: str, target: Path) -> Path:
    """``../shared/datasets/<name>.tar.gz`` unpacked under ``target`` (once)."""
    folder = target / name
    if not (folder / "styles.csv").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(DATASETS / f"{name}.tar.gz") as tar:
            tar.extractall(target, filter="data")
    return folder


def median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """Host, CPU model, cores and any bfloat16 hardware: two machines may share a model name
    and differ in what they run bfloat16 on."""
    cpu, flags = "unknown CPU", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    bf16 = ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) or "no bfloat16 hardware"
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores ({bf16}), "
        f"Python {platform.python_version()}"
    )


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def record(title: str, table: str, notes: str = "") -> None:
    """Print a result table and append it, dated, to BENCHMARKS.md."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"\n### {title} ({stamp}, commit {commit()})\n\n{machine()}\n\n{table}\n"
    if notes:
        block += f"\n{notes}\n"
    print(block)
    with BENCHMARKS.open("a") as handle:
        handle.write(block)


ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Settings that say where things live: each benchmark sets its own.
_PLACES = (
    "LOOKALIKE_DATABASE_URL",
    "LOOKALIKE_BROKER_URL",
    "LOOKALIKE_QUEUE",
    "LOOKALIKE_MEDIA_DIR",
)


def lookalike_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a `lookalike` child: the model settings kept, the
    places replaced by ``overrides``."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in _PLACES}
    env.update(PYTHONPATH=str(ROOT), **overrides)
    return env


def listed_ids(database_url: str) -> list[str]:
    """The ids of the products that have a lookalike list, sorted: what the read benches ask
    for."""
    from sqlalchemy import create_engine, select

    from core.models import Neighbour

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = select(Neighbour.product_id).where(Neighbour.rank == 1)
            return sorted(connection.scalars(query))
    finally:
        engine.dispose()


def create_database() -> str:
    """A new, empty PostgreSQL database on 127.0.0.1; returns its URL."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"lookalike_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        name = url.rsplit("/", 1)[1]
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def index_in_process(folder: Path, env: dict[str, str]) -> None:
    """`lookalike index FOLDER` in a child process, on the database ``env`` names."""
    import sys

    print("indexing", folder, "into", env["LOOKALIKE_DATABASE_URL"], flush=True)
    subprocess.run(
        [sys.executable, "-m", "cli", "index", str(folder)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a benchmark starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_web(
    env: dict[str, str],
    workers: int,
    threads: int = 2,
    access_log: bool = True,
    worker_class: str = "gevent",
) -> tuple[subprocess.Popen[bytes], str]:
    """`lookalike serve` (gunicorn) on a free loopback port, in its own process group."""
    import sys

    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            "--threads",
            str(threads),
            "--access-log" if access_log else "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return web, f"http://127.0.0.1:{port}"


def peak_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (a worker's main and pool processes)."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far, from /proc (processes that ended are skipped)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine: backends, checkpointer, WAL writer..."""
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]
