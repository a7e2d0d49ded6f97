"""Gradient accumulation (SOLVER.ACCUMULATION_STEPS): K passes of B/K images give the update of
one pass of B images, and iterations, the schedule and checkpoints count optimizer steps."""
import pytest
import torch
from detectron2.engine import hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.utils.events import EventStorage
from fvcore.common.param_scheduler import CosineParamScheduler
from torch import nn

from vlt_common.engine import get_vlt_cfg
from vlt_common.engine import trainer as trainer_module
from vlt_common.engine.trainer import (
    VLTAMPStepTrainer,
    VLTStepTrainer,
    VLTTrainer,
    micro_batch_size,
)

BATCH = 8


class _Regressor(nn.Module):
    """A BN-free model whose loss is a mean over the images of the batch (two terms)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))

    def forward(self, batch):
        x, y = batch
        out = self.net(x)
        return {"loss_mse": (out - y).pow(2).mean(), "loss_l1": 0.1 * (out - y).abs().mean()}


def _batches(size, steps):
    """The same images for every batch size: ``steps`` optimizer steps of BATCH images."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(steps * BATCH, 4, generator=g), torch.randn(steps * BATCH, 2, generator=g)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _train(accumulation_steps, optimizer_cls, trainer_cls=VLTStepTrainer, steps=3, **kwargs):
    torch.manual_seed(0)
    model = _Regressor()
    optimizer = optimizer_cls(model.parameters())
    loader = _batches(BATCH // accumulation_steps, steps)
    trainer = trainer_cls(model, iter(loader), optimizer, accumulation_steps=accumulation_steps,
                          **kwargs)
    trainer.train(0, steps)
    return model, trainer


@pytest.mark.parametrize("optimizer_cls", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
], ids=["sgd", "adamw"])
@pytest.mark.parametrize("accumulation_steps", [2, 4])
def test_accumulation_gives_the_full_batch_update(accumulation_steps, optimizer_cls):
    full, _ = _train(1, optimizer_cls)
    accumulated, _ = _train(accumulation_steps, optimizer_cls)
    torch.manual_seed(0)
    initial = _Regressor()
    for p_full, p_acc, p_0 in zip(full.parameters(), accumulated.parameters(),
                                  initial.parameters()):
        assert not torch.allclose(p_full, p_0)  # the steps moved the weights
        torch.testing.assert_close(p_acc, p_full, rtol=1e-5, atol=1e-6)


class _UnscaledPasses(VLTStepTrainer):
    """Sums the passes' gradients without the 1/K scale (the bug the test above must catch)."""

    def backward(self, loss):
        super().backward(loss * self.accumulation_steps)


def test_the_parity_check_catches_unscaled_accumulation():
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    full, _ = _train(1, sgd)
    unscaled, _ = _train(2, sgd, _UnscaledPasses)
    with pytest.raises(AssertionError):
        for p_unscaled, p_full in zip(unscaled.parameters(), full.parameters()):
            torch.testing.assert_close(p_unscaled, p_full, rtol=1e-5, atol=1e-6)


def test_amp_trainer_accumulates_through_the_grad_scaler():
    """The mixed-precision step scales each pass's loss and unscales once before the step
    (a CPU GradScaler; autocast is CUDA-only and stays off here)."""
    sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    full, _ = _train(1, sgd)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    accumulated, trainer = _train(4, sgd, VLTAMPStepTrainer, grad_scaler=scaler,
                                  precision=torch.bfloat16)
    assert trainer.state_dict()["grad_scaler"]["scale"] == 2.0 ** 10
    for p_acc, p_full in zip(accumulated.parameters(), full.parameters()):
        torch.testing.assert_close(p_acc, p_full, rtol=1e-5, atol=1e-6)


class _CountingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def test_iterations_and_the_schedule_count_optimizer_steps():
    torch.manual_seed(0)
    model = _Regressor()
    optimizer = _CountingSGD(model.parameters())
    max_iter, accumulation_steps = 5, 4
    scheduler = LRMultiplier(optimizer, WarmupParamScheduler(CosineParamScheduler(1, 0), 0.001, 0),
                             max_iter)
    loader = _batches(BATCH // accumulation_steps, max_iter + 1)
    passes = iter(loader)
    trainer = VLTStepTrainer(model, passes, optimizer, accumulation_steps=accumulation_steps)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    trainer.train(0, max_iter)
    assert optimizer.steps == max_iter
    assert scheduler.last_epoch == max_iter
    assert len(list(passes)) == len(loader) - max_iter * accumulation_steps
    # The cosine schedule reached its end after MAX_ITER optimizer steps (not passes).
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_logged_losses_are_the_mean_over_the_passes():
    model, trainer = _train(2, lambda p: torch.optim.SGD(p, lr=0.0), steps=1)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer._data_loader_iter_obj = iter(_batches(BATCH // 2, 1))
        trainer.run_step()
        logged = storage.latest()["loss_mse"][0]
    x, y = _batches(BATCH, 1)[0]
    with torch.no_grad():
        expected = (model.net(x) - y).pow(2).mean().item()
    assert logged == pytest.approx(expected, rel=1e-5)


def test_micro_batch_size_and_bad_splits():
    cfg = get_vlt_cfg()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATION_STEPS = 16, 4
    assert micro_batch_size(cfg, world_size=2) == 2  # the paper's batch 16 on 2 GPUs
    cfg.SOLVER.ACCUMULATION_STEPS = 3
    with pytest.raises(ValueError, match="IMS_PER_BATCH=16.*ACCUMULATION_STEPS=3"):
        micro_batch_size(cfg, world_size=2)
    with pytest.raises(ValueError, match="ACCUMULATION_STEPS must be >= 1"):
        VLTStepTrainer(_Regressor(), [], torch.optim.SGD(_Regressor().parameters(), lr=0.1),
                       accumulation_steps=0)


def test_the_trainer_rejects_a_batch_that_does_not_split_before_building_the_model():
    cfg = get_vlt_cfg()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATION_STEPS = 2, 4
    cfg.MODEL.META_ARCHITECTURE = "NotARegisteredModel"  # building it would be another error
    with pytest.raises(ValueError, match="IMS_PER_BATCH=2.*ACCUMULATION_STEPS=4"):
        VLTTrainer(cfg)


def test_the_train_loader_yields_the_batch_of_one_pass(monkeypatch):
    seen = {}

    def fake_loader(cfg, mapper, total_batch_size):
        seen.update(cfg_batch=cfg.SOLVER.IMS_PER_BATCH, total_batch_size=total_batch_size)

    monkeypatch.setattr(trainer_module, "build_detection_train_loader", fake_loader)
    monkeypatch.setattr(trainer_module, "build_dataset_mapper", lambda cfg, is_train: None)
    cfg = get_vlt_cfg()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATION_STEPS = 16, 4
    VLTTrainer.build_train_loader(cfg)
    assert seen == {"cfg_batch": 16, "total_batch_size": 4}
