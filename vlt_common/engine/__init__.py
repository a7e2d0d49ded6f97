"""Training and evaluation glue shared by VLTSeg and VLTDet: the config, the trainer, the atomic
checkpointer and the training hooks.

Importing it registers SynthDG (:mod:`vlt_common.benchmarks.synthdg.builtin`) beside the
downloaded datasets, so every run can name the ``synthdg_*`` datasets."""
from vlt_common.benchmarks.synthdg import builtin as _synthdg_builtin  # noqa: F401 (registers)

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
