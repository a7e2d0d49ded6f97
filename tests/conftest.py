"""Shared test set-up: CPU only, deterministic, and a private datasets folder per session."""
import os

import pytest
import torch

import vltdet  # noqa: F401  (both projects, as in train_net.py: config keys, models, mappers)
import vltseg  # noqa: F401

# Tests never touch a GPU, even when one is present, so that they behave the same everywhere.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tree_pythonpath():
    """PYTHONPATH for subprocesses (train_net.py runs, import probes): the packages of this tree,
    ahead of any installed copy of VLT."""
    projects = os.path.join(REPO, "projects")
    paths = [REPO, os.path.join(projects, "VLTSeg"), os.path.join(projects, "VLTDet")]
    return os.pathsep.join(paths)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
