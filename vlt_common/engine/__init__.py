"""Training and evaluation glue shared by VLTSeg and VLTDet: the config, the trainer, the atomic
checkpointer and the training hooks."""
from .checkpoint import AtomicCheckpointer
from .defaults import get_vlt_cfg, setup_cfg
from .hooks import FrozenBackboneWarmup
from .trainer import VLTTrainer, check_losses_finite

__all__ = [
    "AtomicCheckpointer",
    "FrozenBackboneWarmup",
    "VLTTrainer",
    "check_losses_finite",
    "get_vlt_cfg",
    "setup_cfg",
]
