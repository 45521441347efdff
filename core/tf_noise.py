"""TensorFlow's start-up lines, kept out of a CPU user's console.

Importing TensorFlow and building the first model print, from C++ and before any log level
applies (``TF_CPP_MIN_LOG_LEVEL`` only works once absl's logging is set up), that oneDNN is on,
that no CUDA driver was found, and an ``E`` line that ``cuInit`` failed: noise on a machine
without a GPU, alarming to read. :func:`quiet_start` catches what the process writes to file
descriptor 2 meanwhile and writes back every line but those. Where an NVIDIA driver is present
the CUDA lines are kept: there they mean something.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_ALWAYS = (
    rb"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"oneDNN custom operations are on",
    rb"This TensorFlow binary is optimized to use available CPU instructions",
    rb"To enable the following instructions: .* rebuild TensorFlow",
)
_WITHOUT_GPU = (
    rb"cudart_stub\.cc",
    rb"Could not find cuda drivers",
    rb"failed call to cuInit",
    rb"Unable to register cu(DNN|FFT|BLAS) factory",
    rb"computation placer already registered",
    rb"TF-TRT Warning",
)


def has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()


def noise_pattern(gpu: bool) -> re.Pattern[bytes]:
    return re.compile(b"|".join(_ALWAYS if gpu else _ALWAYS + _WITHOUT_GPU))


@contextmanager
def quiet_start() -> Iterator[None]:
    """Inside, the process's stderr (fd 2) goes to a file; afterwards its lines go back to
    stderr, TensorFlow's start-up noise left out."""
    # File descriptor 2 itself, where the C++ lines go, whatever sys.stderr is now (Celery's
    # pool processes replace it with a logging proxy).
    fd = 2
    noise = noise_pattern(has_nvidia_driver())
    _flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), fd)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved, fd)
            os.close(saved)
            caught.seek(0)
            kept = b"".join(line for line in caught if not noise.search(line))
            if kept:
                os.write(fd, kept)


def _flush() -> None:
    with suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
