"""GPU workers for the embedding stage (issue 16, item 6), as far as a machine without a GPU can
test them: the extra is declared, embedding chunks are routed to a queue of their own that GPU
workers alone take while the others take everything, and asking for a GPU where there is none
falls back to the CPU. Also how any worker shares a machine: below the web processes' priority."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from importlib.metadata import requires
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement

from core.devices import choose_device, visible_gpus
from core.errors import InvalidSetting
from core.jobs import JobStep, StepCall
from core.settings import get_settings
from tests.conftest import REDIS_URL, Workers
from worker.app import create_celery, worker_queues
from worker.queue import CeleryQueue


def test_the_gpu_extra_brings_tensorflow_with_cuda() -> None:
    declared = [Requirement(line) for line in requires("lookalike") or []]
    gpu = [r for r in declared if r.marker is not None and r.marker.evaluate({"extra": "gpu"})]
    assert [(r.name, sorted(r.extras)) for r in gpu if r.name == "tensorflow"] == [
        ("tensorflow", ["and-cuda"])
    ]


def test_embedding_chunks_go_to_their_own_queue_and_the_rest_to_the_main_one() -> None:
    main, embed = f"lookalike-test-{uuid.uuid4().hex[:6]}", f"embed-{uuid.uuid4().hex[:6]}"
    settings = get_settings(broker_url=REDIS_URL, queue=main, embed_queue=embed)
    queue = CeleryQueue(create_celery(settings))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        queue.send(StepCall(JobStep.INDEX_CHUNK, ("job", 0)))
        queue.send(StepCall(JobStep.INDEX_CHUNK, ("job", 1)))
        for step in (JobStep.FINALISE_INDEX, JobStep.ADD_PRODUCTS, JobStep.DELETE_PRODUCTS):
            queue.send(StepCall(step, ("job",)))
        assert (client.llen(embed), client.llen(main)) == (2, 3)
    finally:
        client.delete(main, embed)
        queue.app.close()
    # A GPU worker takes the chunks alone; every other worker takes both, so chunks drain
    # without GPU workers too. Without an embedding queue there is one queue.
    assert worker_queues(settings, embed_only=True) == [embed]
    assert worker_queues(settings) == [main, embed]
    assert worker_queues(get_settings(queue=main)) == [main]
    with pytest.raises(InvalidSetting, match="LOOKALIKE_EMBED_QUEUE"):
        worker_queues(get_settings(queue=main), embed_only=True)


def test_a_gpu_asked_for_where_there_is_none_falls_back_to_the_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if visible_gpus():
        pytest.skip("this machine has a GPU: the fallback cannot be shown here")
    with caplog.at_level(logging.WARNING, logger="core.devices"):
        assert choose_device("gpu") == "cpu"
    assert "sees no GPU" in caplog.text
    assert choose_device("auto") == "cpu" and choose_device("cpu") == "cpu"


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_worker_runs_below_the_web_processes_priority(workers: Workers) -> None:
    """Every process of `lookalike worker` (its pool too) yields the CPU to `lookalike serve`
    on shared cores: niceness raised by --nice, 10 by default; --nice 0 keeps it."""
    mine = os.nice(0)
    (default,) = workers.start(1)
    (same,) = workers.start(1, args=("--nice", "0"))
    for process, expected in ((default, min(19, mine + 10)), (same, mine)):
        group = subprocess.run(
            ["pgrep", "-g", str(process.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(group) >= 2  # the main process and its pool child
        assert {_niceness(int(pid)) for pid in group} == {expected}
