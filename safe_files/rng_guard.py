"""Build models without touching the random generators the webui samples from.

A module's `__init__` draws its initial weights from torch's global generator (then replaced by the file's), and the
webui draws img2img's VAE-encode noise from that same generator: a model built between two generations would change
the next picture. Every place that builds a network does it inside `rng_untouched()` (a context manager, or a
decorator), which puts back torch's CPU generator, every CUDA device's, numpy's global and Python's `random`.

    @rng_untouched()
    def load_facenet(path): ...
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def _cuda_devices() -> list[int]:
    """Every CUDA device (reading their states initialises CUDA, which the webui has done already)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Run the block, then restore torch's (CPU and CUDA), numpy's and Python's global random states."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=_cuda_devices()):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
