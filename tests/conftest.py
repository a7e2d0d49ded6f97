"""Shared test set-up: CPU only, deterministic, and a private datasets folder per session."""
import os

import pytest
import torch
import vltdet  # noqa: F401  (both projects, as in train_net.py: config keys, models, mappers)
import vltseg  # noqa: F401

# Tests never touch a GPU, even when one is present, so that they behave the same everywhere.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
