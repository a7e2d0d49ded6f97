"""FrozenBackboneWarmup: the trunk is frozen before iteration N, trainable from N, also after a
resume; misconfigured trainers are rejected."""
import pytest
import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from torch import nn

from vlt_common.engine.hooks import FrozenBackboneWarmup


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.neck = nn.Linear(4, 4)

    def set_trunk_trainable(self, trainable: bool):
        self.trunk.requires_grad_(trainable)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.head = nn.Linear(4, 1)
        self.trunk_trainable_per_iter = []

    def forward(self, batch):
        self.trunk_trainable_per_iter.append(self.backbone.trunk.weight.requires_grad)
        out = self.head(self.backbone.neck(self.backbone.trunk(batch)))
        return {"loss": (out**2).mean()}


def _loader():
    gen = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(2, 4, generator=gen)


def _trainer(model, num_iters):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, _loader(), optimizer)
    trainer.register_hooks([FrozenBackboneWarmup(num_iters)])
    return trainer


def test_frozen_then_trainable():
    model = _Model()
    trunk_before = model.backbone.trunk.weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    trainer = _trainer(model, num_iters=3)
    trainer.train(0, 3)
    assert model.trunk_trainable_per_iter == [False, False, False]
    assert torch.equal(model.backbone.trunk.weight, trunk_before)  # not updated while frozen
    assert not torch.equal(model.head.weight, head_before)
    trainer.train(3, 5)
    assert model.trunk_trainable_per_iter[3:] == [True, True]
    assert not torch.equal(model.backbone.trunk.weight, trunk_before)


def test_switches_inside_one_run():
    model = _Model()
    _trainer(model, num_iters=2).train(0, 5)
    assert model.trunk_trainable_per_iter == [False, False, True, True, True]


@pytest.mark.parametrize(
    "start,expected",
    [(1, [False, False, True]), (3, [True, True, True])],
)
def test_resume(start, expected):
    # a fresh trainer (trunk trainable after construction) resumed at `start`
    model = _Model()
    _trainer(model, num_iters=3).train(start, start + 3)
    assert model.trunk_trainable_per_iter == expected


def test_optimizer_built_while_frozen_is_rejected():
    model = _Model()
    model.backbone.set_trunk_trainable(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer = SimpleTrainer(model, _loader(), optimizer)
    trainer.register_hooks([FrozenBackboneWarmup(2)])
    with pytest.raises(ValueError, match="not in the optimizer"):
        trainer.train(0, 1)


def test_backbone_without_switch_is_rejected():
    model = _Model()
    model.backbone = nn.Linear(4, 4)
    trainer = _trainer(model, num_iters=2)
    with pytest.raises(TypeError, match="set_trunk_trainable"):
        trainer.train(0, 1)
    with pytest.raises(ValueError, match="num_iters"):
        FrozenBackboneWarmup(-1)


def test_ddp_unwrapped_and_checked(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        plain = nn.parallel.DistributedDataParallel(_Model())
        with pytest.raises(ValueError, match="find_unused_parameters"):
            _trainer(plain, num_iters=2).train(0, 1)

        model = _Model()
        trunk_before = model.backbone.trunk.weight.detach().clone()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        trainer = _trainer(ddp, num_iters=2)
        trainer.train(0, 2)
        assert torch.equal(model.backbone.trunk.weight, trunk_before)
        trainer.train(2, 4)
        assert model.trunk_trainable_per_iter == [False, False, True, True]
        assert not torch.equal(model.backbone.trunk.weight, trunk_before)
    finally:
        dist.destroy_process_group()
