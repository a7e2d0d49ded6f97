"""Atomic checkpoints: a crash while saving never leaves a truncated file behind."""
import os

import pytest
import torch
from torch import nn

from vlt_common.engine import AtomicCheckpointer


def _checkpointer(tmp_path):
    model = nn.Linear(4, 3)
    return model, AtomicCheckpointer(model, save_dir=str(tmp_path))


def test_save_writes_file_and_tags_last(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000009", iteration=9)
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert data["iteration"] == 9
    torch.testing.assert_close(data["model"]["weight"], model.weight.detach())
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000009", iteration=9)
    before = (tmp_path / "model_0000009.pth").read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000009", iteration=19)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000019", iteration=19)

    # The old file is intact, "last" still points at it, no temporary or partial file remains.
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_resume_loads_saved_weights(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_final", iteration=4)
    other = nn.Linear(4, 3)
    extra = AtomicCheckpointer(other, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    torch.testing.assert_close(other.weight, model.weight)


def test_missing_weights_file_names_the_path(tmp_path):
    _, ckpt = _checkpointer(tmp_path)
    missing = str(tmp_path / "nowhere" / "model.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS.*nowhere/model.pth"):
        ckpt.load(missing)


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from vlt_common.utils.atomic import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(str(tmp_path / "report.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
