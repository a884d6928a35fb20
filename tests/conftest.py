"""Shared test fixtures: one seeding fixture and the location of the shared real data (tests that read
it skip when it is absent)."""

from __future__ import annotations

import os
import random
from pathlib import Path

# Without a GPU, Triton kernels can only run under Triton's CPU interpreter, which must be chosen before
# any module defines a kernel -- so here, before any test module imports torch, triton or gsit.
if "TRITON_INTERPRET" not in os.environ and not Path("/dev/nvidiactl").exists():
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config) -> None:
    """Run torch on one intra-op thread.  The test tensors are tiny, and on a small, busy machine (2 cores
    shared with other processes) torch's spinning worker threads made a 16-wide forward pass 50x slower.
    Set GSIT_TEST_THREADS to use more."""
    torch.set_num_threads(int(os.environ.get("GSIT_TEST_THREADS", "1")))


def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository (may not exist)."""
    return SHARED_DATA_DIR


@pytest.fixture
def seed() -> int:
    """Seed torch, numpy and random with 0; returns the seed."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    return 0


@pytest.fixture
def data_dir() -> Path:
    """The shared data folder, or skip the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA_DIR} is absent")
    return SHARED_DATA_DIR
