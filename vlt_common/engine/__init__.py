"""Training and evaluation glue shared by VLTSeg and VLTDet: the config, the trainer, the atomic
checkpointer and the training hooks.

Importing it registers VLT's datasets (no file is read): the downloaded ones
(:mod:`vlt_common.data.datasets`) and SynthDG (:mod:`vlt_common.benchmarks.synthdg.builtin`), so
every run built by :func:`setup_cfg` can name them. The models themselves register nothing."""
import vlt_common.data.datasets  # noqa: F401  (registers the downloaded datasets)
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
