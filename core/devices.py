"""Which device a process's model runs on: the CPU, or the GPUs TensorFlow finds.

The model id names weights, layers, input and precision, not the device: a GPU worker and a CPU
worker of the same precision give vectors that mix (BENCHMARKS.md measures how closely they
agree). For that, float32 on a GPU must mean float32: TensorFlow's default of TF32 matrix
products on recent NVIDIA GPUs (10 bits of mantissa) is turned off.

Decided once, before TensorFlow builds anything (it fixes its devices then).
"""

from __future__ import annotations

import logging

# Before TensorFlow, which every model here comes through (this module is imported before any
# of it): TensorFlow's libraries carry an SQLite of their own, built without FTS5, and the one
# loaded first serves every later connection in the process, so an embedded catalogue opened
# after the model would fail on its name-search table ("no such module: fts5").
import sqlite3  # noqa: F401
from contextlib import suppress
from typing import Literal

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "gpu"]


def visible_gpus() -> list[object]:
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def choose_device(wanted: Device) -> Literal["cpu", "gpu"]:
    """``cpu`` or ``gpu``: ``auto`` takes the GPUs when TensorFlow sees any; ``gpu`` without
    one falls back to the CPU, with a warning (no GPU build of TensorFlow, no driver)."""
    import tensorflow as tf

    found = visible_gpus() if wanted != "cpu" else []
    if not found:
        if wanted == "gpu":
            log.warning(
                "LOOKALIKE_DEVICE=gpu but TensorFlow sees no GPU (install lookalike[gpu] and "
                "the NVIDIA driver): embedding on the CPU"
            )
        with suppress(RuntimeError):  # already initialised: nothing was placed on a GPU then
            tf.config.set_visible_devices([], "GPU")
        return "cpu"
    tf.config.experimental.enable_tensor_float_32_execution(False)
    for gpu in found:
        with suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    log.info("embedding on %d GPU(s)", len(found))
    return "gpu"
