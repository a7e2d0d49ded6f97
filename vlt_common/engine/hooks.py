"""Detectron2 hooks of VLT."""
import logging

from detectron2.engine import HookBase
from torch import nn

__all__ = ["FrozenBackboneWarmup"]

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class FrozenBackboneWarmup(HookBase):
    """
    Keep the backbone trunk frozen for the first ``num_iters`` iterations, then fine-tune it
    (MODEL.VLT_BACKBONE.FINETUNE "frozen_warmup", SOLVER.FROZEN_BACKBONE_ITERS): the randomly
    initialized head first adapts to the pre-trained features before their gradients flow.

    The state is decided from ``trainer.iter`` in ``before_train`` and ``before_step``, so a run
    resumed with ``--resume`` is frozen or not exactly as the uninterrupted run would be. The
    trunk is switched with ``model.backbone.set_trunk_trainable(bool)`` (the VLT backbone
    contract); frozen parameters get no gradient, so the optimizer leaves them (and their
    moments) untouched.

    What the trainer must do:

    * build the optimizer while the trunk is trainable, so its parameters are in it (checked in
      ``before_train``);
    * wrap the model in DistributedDataParallel while the trunk is trainable and with
      ``find_unused_parameters=True``: DDP's reducer is built once over the parameters that
      require grad at wrapping time, and while the trunk is frozen their gradients never arrive
      (checked in ``before_train``).
    """

    def __init__(self, num_iters: int):
        """
        Args:
            num_iters (int): iterations 0 .. num_iters - 1 run with the trunk frozen.
        """
        if num_iters < 0:
            raise ValueError(f"FrozenBackboneWarmup: num_iters must be >= 0, got {num_iters}")
        self.num_iters = num_iters
        self._frozen = None

    def _backbone(self) -> nn.Module:
        backbone = getattr(_unwrap(self.trainer.model), "backbone", None)
        if not callable(getattr(backbone, "set_trunk_trainable", None)):
            raise TypeError(
                "FrozenBackboneWarmup needs model.backbone.set_trunk_trainable(bool); "
                f"{type(backbone).__name__} does not have it"
            )
        return backbone

    def _check_trainer(self, backbone: nn.Module) -> None:
        model = self.trainer.model
        if isinstance(model, nn.parallel.DistributedDataParallel) and not getattr(
            model, "find_unused_parameters", False
        ):
            raise ValueError(
                "FrozenBackboneWarmup: wrap the model with DistributedDataParallel("
                "find_unused_parameters=True); the frozen trunk produces no gradients"
            )
        backbone.set_trunk_trainable(True)
        in_optimizer = {
            id(p) for group in self.trainer.optimizer.param_groups for p in group["params"]
        }
        missing = [
            name
            for name, p in backbone.named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
            raise ValueError(
                f"FrozenBackboneWarmup: {len(missing)} trunk parameters (e.g. "
                f"backbone.{missing[0]}) are not in the optimizer; build the optimizer while the "
                "trunk is trainable"
            )

    def _apply(self) -> None:
        frozen = self.trainer.iter < self.num_iters
        if frozen == self._frozen:
            return
        self._backbone().set_trunk_trainable(not frozen)
        self._frozen = frozen
        if frozen:
            logger.info("Backbone trunk frozen until iteration %d", self.num_iters)
        else:
            logger.info("Backbone trunk trainable from iteration %d", self.trainer.iter)

    def before_train(self):
        self._check_trainer(self._backbone())
        self._frozen = None
        self._apply()

    def before_step(self):
        self._apply()
