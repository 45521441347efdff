"""Slow clients (issue 12, item 5): connections that send a request body a byte at a time must
not keep anyone else waiting. `lookalike serve` runs gevent workers (a greenlet per connection,
no thread to hold), and docker-compose.yml puts nginx in front (deploy/nginx.conf), which reads
each request whole before the app sees it. Both are run here for real, against real sockets
that trickle; gthread alone is run too, to show the check sees a blocked server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from bench.common import free_port
from bench.perf.slow_clients import Trickle, nginx_command
from tests.conftest import ROOT, SAMPLE_IDS, Workers


class Served:
    """A process answering HTTP on ``port`` (`lookalike serve`, nginx), stopped with its group."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.log = port, log
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url("/api/products"), timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{command[:4]} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def serve(service_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `lookalike serve` with the given options; every one started is stopped after."""
    started: list[Served] = []

    def start(*options: str) -> Served:
        port = free_port()
        command = [sys.executable, "-m", "cli", "serve", "--bind", f"127.0.0.1:{port}"]
        command += ["--no-access-log", *options]
        log = tmp_path / f"serve-{len(started)}.log"
        served = Served(command, port, service_env, log)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def answered_quickly(served: Served, path: str, count: int, timeout: float) -> int:
    """How many of ``count`` GETs of ``path`` answered 200 or 404 (JSON) within ``timeout``."""
    answered = 0
    for _ in range(count):
        try:
            response = requests.get(served.url(path), timeout=timeout)
        except requests.Timeout:
            continue
        assert response.status_code in (200, 404), response.text
        assert response.headers["Content-Type"].startswith("application/json")
        answered += 1
    return answered


def test_default_serve_answers_while_bodies_trickle(
    serve: Callable[..., Served], workers: Workers, fashion_dev: Path
) -> None:
    """One gevent process, 30 trickling uploads: reads answer at once, and a real upload beside
    them is stored, embedded by a worker and listed, all through the same process."""
    served = serve("--workers", "1")
    trickle = Trickle(served.port, 30)
    try:
        assert answered_quickly(served, "/api/products/none/similar", 20, timeout=2) == 20
        workers.start(1)
        files = [
            ("images", (f"{pid}.jpg", (fashion_dev / "images" / f"{pid}.jpg").read_bytes()))
            for pid in SAMPLE_IDS[:6]
        ]
        response = requests.post(served.url("/api/products"), files=files, timeout=10)
        assert response.status_code == 202, response.text
        status_url = response.json()["status_url"]
        deadline = time.monotonic() + 240
        while (state := requests.get(served.url(status_url), timeout=5).json())["state"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["state"] == "succeeded", state
        similar = requests.get(served.url(f"/api/products/{SAMPLE_IDS[0]}/similar"), timeout=2)
        assert similar.status_code == 200
        assert len(similar.json()["neighbours"]) == 5
    finally:
        trickle.stop()
    # Each trickling request, cut off when its client went away, left nothing behind.
    assert answered_quickly(served, "/api/products/none/similar", 5, timeout=2) == 5


def test_the_check_sees_a_blocked_server(serve: Callable[..., Served]) -> None:
    """The same check against gthread with two threads and two trickling clients: the reads
    wait behind the bodies (the defect of issue 12), so a passing check above means something."""
    served = serve("--workers", "1", "--worker-class", "gthread", "--threads", "2")
    trickle = Trickle(served.port, 2)
    try:
        assert answered_quickly(served, "/api/products/none/similar", 3, timeout=1.5) == 0
    finally:
        trickle.stop()
    assert answered_quickly(served, "/api/products/none/similar", 3, timeout=5) == 3


def test_nginx_front_buffers_bodies(
    serve: Callable[..., Served], service_env: dict[str, str], tmp_path: Path
) -> None:
    """docker-compose's nginx in front of a single gthread thread, the least a server can
    have: 30 trickling uploads reach nginx only, reads pass straight through, and a whole
    request (a cross-site check on the Host nginx forwards, then a bad photo) reaches the app."""
    if not Path(shutil.which("nginx") or "/usr/sbin/nginx").exists():
        pytest.skip("needs nginx (apt-get install -y nginx-light), as .ci/run installs")
    app = serve("--workers", "1", "--worker-class", "gthread", "--threads", "1")
    port = free_port()
    command = nginx_command(tmp_path, port, app.port)
    front = Served(command, port, service_env, tmp_path / "nginx.log")
    try:
        trickle = Trickle(port, 30)
        try:
            assert answered_quickly(front, "/api/products/none/similar", 20, timeout=2) == 20
            origin = {"Origin": f"http://127.0.0.1:{port}"}
            files = [("images", ("bad.jpg", b"not a photo"))]
            bad = requests.post(front.url("/api/products"), files=files, headers=origin, timeout=5)
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"]["code"] == "invalid_upload", bad.text
        finally:
            trickle.stop()
    finally:
        front.stop()
