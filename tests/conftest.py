"""Shared test fixtures: paths to the golden data shipped under tests/golden/."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(ROOT))

# The goldens were produced with one thread; two threads stay well inside every tolerance,
# but pinning keeps the numbers reproducible across machines.
torch.set_num_threads(int(os.environ.get("DDFM_TEST_THREADS", "1")))
# `threads: auto` keeps torch's count where OMP_NUM_THREADS is set (ddfm.determinism.auto_threads):
# so the pin holds during fusion too, and children the tests start get it as well.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("DDFM_TEST_THREADS", "1"))


@pytest.fixture(autouse=True)
def _end_children():
    """Whatever a test does or fails, the child processes it started do not outlive it."""
    from helpers import end_children
    try:
        yield
    finally:
        end_children()


@pytest.fixture(scope="session")
def golden_dir():
    return GOLDEN


def load_golden(name):
    return torch.load(GOLDEN / name, weights_only=True)
