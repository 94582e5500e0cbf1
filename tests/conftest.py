"""Test-suite plumbing.

In a light environment without torch (gymnasium 0.29 + numpy 1.x; the SimplerEnv stack's venv) only modules
marked ``core`` or ``simpler`` are collected: such a module says ``pytest.mark.core`` / ``pytest.mark.simpler``
and imports nothing of the learning stack at module level.
"""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_ignore_collect(collection_path: Path, config):
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    text = collection_path.read_text()
    return "pytest.mark.core" not in text and "pytest.mark.simpler" not in text


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Torch runs on one thread in tests, so it never oversubscribes the 2 cores shared with env workers."""
    if not HAS_TORCH:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
