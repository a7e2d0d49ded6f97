"""A non-finite loss stops training before the optimizer step, naming the iteration and term."""
import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from vlt_common.engine import check_losses_finite
from vlt_common.engine.trainer import GuardedSimpleTrainer


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


def test_guarded_trainer_stops_before_the_step():
    model = _NaNAtIteration(bad_iter=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = iter(lambda: [None], 0)  # an endless stream of empty batches
    trainer = GuardedSimpleTrainer(model, data, optimizer)
    with EventStorage(0) as storage, pytest.raises(FloatingPointError, match="iteration 3.*loss_bad"):
        for it in range(10):
            trainer.iter = storage.iter = it
            trainer.run_step()
            weights_before_failure = model.weight.detach().clone()
    # Three good steps happened; the fourth raised before updating the weights.
    assert model.calls == 4
    assert torch.isfinite(model.weight).all()
    torch.testing.assert_close(model.weight.detach(), weights_before_failure)
