"""A non-finite loss stops training before the optimizer step, naming the iteration and term."""
import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from vlt_common.engine import check_losses_finite
from vlt_common.engine.trainer import VLTStepTrainer


def test_check_losses_finite_names_terms_and_iteration():
    losses = {"loss_ce": torch.tensor(1.0), "loss_mask": torch.tensor(float("nan")),
              "loss_dice": torch.tensor(float("inf"))}
    with pytest.raises(FloatingPointError) as e:
        check_losses_finite(losses, 17)
    message = str(e.value)
    assert "iteration 17" in message
    assert "loss_mask=nan" in message and "loss_dice=inf" in message
    assert "loss_ce=" not in message.split("(all terms")[0]
    check_losses_finite({"loss_ce": torch.tensor(0.5)}, 0)


class _NaNAtIteration(nn.Module):
    """Returns a finite loss, then NaN from iteration ``bad_iter`` on."""

    def __init__(self, bad_iter):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.bad_iter = bad_iter
        self.calls = 0

    def forward(self, batch):
        scale = float("nan") if self.calls >= self.bad_iter else 1.0
        self.calls += 1
        return {"loss_ok": self.weight.sum() * 0.1, "loss_bad": self.weight.pow(2).sum() * scale}


@pytest.mark.parametrize("async_write_metrics", [False, True])
def test_guarded_trainer_stops_before_the_step(async_write_metrics):
    """The guard does not depend on how Detectron2 writes the metrics (asynchronously or not)."""
    model = _NaNAtIteration(bad_iter=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = iter(lambda: [None], 0)  # an endless stream of empty batches
    trainer = VLTStepTrainer(model, data, optimizer, async_write_metrics=async_write_metrics)
    bad_step = pytest.raises(FloatingPointError, match="iteration 3.*loss_bad")
    with EventStorage(0) as storage, bad_step:
        for it in range(10):
            trainer.iter = storage.iter = it
            trainer.run_step()
            weights_before_failure = model.weight.detach().clone()
    # Three good steps happened (they moved the weights); the fourth raised before updating them.
    assert model.calls == 4
    assert not torch.equal(weights_before_failure, torch.ones(3))
    torch.testing.assert_close(model.weight.detach(), weights_before_failure)


def test_a_non_finite_pass_of_an_accumulation_stops_before_the_step():
    """With 3 passes per step, a NaN in the second pass of iteration 1 leaves the weights of
    iteration 0 (the first pass's gradient is never applied)."""
    model = _NaNAtIteration(bad_iter=4)  # passes 0-2: iteration 0; 3-5: iteration 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = VLTStepTrainer(model, iter(lambda: [None], 0), optimizer, accumulation_steps=3)
    with EventStorage(0) as storage:
        trainer.run_step()
        after_first_step = model.weight.detach().clone()
        storage.iter = trainer.iter = 1
        with pytest.raises(FloatingPointError, match="iteration 1.*loss_bad"):
            trainer.run_step()
    assert model.calls == 5
    assert not torch.equal(after_first_step, torch.ones(3))
    torch.testing.assert_close(model.weight.detach(), after_first_step)
