"""Dataset registration: importing this package registers every VLT dataset name in Detectron2's
DatasetCatalog and MetadataCatalog, under ``$DETECTRON2_DATASETS`` (default ``./datasets``), like
Detectron2's own builtin datasets. Registration only stores paths; nothing is read until a
dataset's dicts are requested. This is the only place that calls the register functions of the
downloaded datasets; SynthDG, which VLT generates itself, registers from
:mod:`vlt_common.benchmarks.synthdg.builtin`.
"""
import os

from . import builtin_meta
from .coco import load_dg_coco, register_all_dg_detection, register_dg_coco
from .layouts import (
    ACDC_CONDITIONS,
    BUILTIN_DATASETS,
    DATASET_DIRS,
    DET_SPLITS,
    SEM_SEG_SPLITS,
    DatasetDescriptor,
    SemSegPart,
)
from .sem_seg import load_dg_sem_seg, register_all_dg_sem_seg, register_dg_sem_seg

__all__ = [
    "builtin_meta",
    "ACDC_CONDITIONS",
    "BUILTIN_DATASETS",
    "DatasetDescriptor",
    "DATASET_DIRS",
    "DET_SPLITS",
    "SEM_SEG_SPLITS",
    "SemSegPart",
    "load_dg_coco",
    "load_dg_sem_seg",
    "register_dg_coco",
    "register_dg_sem_seg",
    "datasets_root",
]


def datasets_root() -> str:
    """The datasets root: ``$DETECTRON2_DATASETS``, or ``datasets`` (relative to the working
    directory) when unset."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


_root = datasets_root()
register_all_dg_sem_seg(_root)
register_all_dg_detection(_root)
