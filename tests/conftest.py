"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread, then restore the setting.

    On a shared CPU, thread hand-offs dominate small convolutions and matmuls (one thread was
    up to ~50x faster here); modules opt in with ``pytestmark``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
