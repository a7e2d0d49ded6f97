"""Registers SynthDG's default copy under ``$DETECTRON2_DATASETS`` (default ``./datasets``) when
imported, as ``detectron2.data.datasets.builtin`` does for Detectron2's datasets.

The runtime dataset package (:mod:`vlt_common.data.datasets`) does not know SynthDG; the engine
(:mod:`vlt_common.engine`) imports this module, so every run built by ``setup_cfg`` can name the
``synthdg_*`` datasets. Registration reads no file.
"""
from vlt_common.data.datasets import datasets_root

from .register import register_synthdg

__all__ = ["SYNTHDG_DATASETS"]

# The names registered at import.
SYNTHDG_DATASETS = register_synthdg(datasets_root())
