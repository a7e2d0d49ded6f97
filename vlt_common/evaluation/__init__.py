"""Multi-domain evaluation: the semantic-segmentation evaluator, the evaluator builder keyed on
``evaluator_type``, the DG report (per-domain metrics, mean over targets, rPD) and overlays."""
from .build import EVALUATOR_REGISTRY, build_evaluator
from .coco_evaluator import DGCOCOEvaluator
from .dg_report import build_dg_report, relative_performance, write_dg_report
from .sem_seg_evaluator import (
    DGSemSegEvaluator,
    confusion_matrix,
    reduce_confusion_matrices,
    sem_seg_metrics,
)
from .visualize import colorize_sem_seg, sem_seg_panels

__all__ = [
    "EVALUATOR_REGISTRY",
    "DGCOCOEvaluator",
    "DGSemSegEvaluator",
    "build_dg_report",
    "build_evaluator",
    "colorize_sem_seg",
    "confusion_matrix",
    "reduce_confusion_matrices",
    "relative_performance",
    "sem_seg_metrics",
    "sem_seg_panels",
    "write_dg_report",
]
