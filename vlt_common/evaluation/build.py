"""Choosing the evaluator of a test dataset from its metadata's ``evaluator_type``."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils.registry import Registry

from .coco_evaluator import DGCOCOEvaluator
from .sem_seg_evaluator import DGSemSegEvaluator
from .submission import SubmissionWriter

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator"]

EVALUATOR_REGISTRY = Registry("DG_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Registry of evaluator builders, keyed by a dataset's metadata ``evaluator_type``.

A registered object is named after the ``evaluator_type`` it serves, is called as
``obj(cfg, dataset_name, output_folder)`` and must return a Detectron2 ``DatasetEvaluator`` whose
``evaluate()`` returns ``{task: {metric: value}}``.
"""


@EVALUATOR_REGISTRY.register()
def dg_sem_seg(cfg, dataset_name, output_folder):
    """:class:`DGSemSegEvaluator` with ``TEST.DG.NUM_VIS`` overlays, the mIoU convention
    ``TEST.MIOU_ABSENT_CLASSES``, at half resolution for the datasets in
    ``TEST.DG.HALF_RESOLUTION_DATASETS``."""
    return DGSemSegEvaluator(
        dataset_name,
        output_dir=output_folder,
        num_vis=cfg.TEST.DG.NUM_VIS,
        distributed=True,
        half_resolution=dataset_name in cfg.TEST.DG.HALF_RESOLUTION_DATASETS,
        absent_classes=cfg.TEST.MIOU_ABSENT_CLASSES,
    )


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name, output_folder):
    """:class:`DGCOCOEvaluator`: the official (pure Python) COCO API on the classes the dataset's
    COCO file shares with the model, matched by name."""
    return DGCOCOEvaluator(dataset_name, output_dir=output_folder, distributed=True)


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    Build the evaluator of one test dataset. With ``TEST.SUBMISSION.DIR`` set, a semantic dataset
    gets a :class:`SubmissionWriter` (the benchmark server's files), together with its metric
    evaluator when it has labels (``sem_seg_root`` in its metadata; test splits have none).

    Args:
        cfg (CfgNode): reads ``TEST.DG.NUM_VIS``, ``TEST.MIOU_ABSENT_CLASSES``,
            ``TEST.SUBMISSION`` (and ``OUTPUT_DIR`` for the default folder).
        dataset_name (str): a registered dataset whose metadata has ``evaluator_type``
            ("dg_sem_seg" or "coco", or any type added to ``EVALUATOR_REGISTRY``).
        output_folder (str or None): where the evaluator writes; default
            ``<OUTPUT_DIR>/inference/<dataset_name>``.

    Returns:
        DatasetEvaluator
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    known = sorted(name for name, _ in EVALUATOR_REGISTRY)
    if evaluator_type is None:
        raise ValueError(
            f"dataset {dataset_name!r} has no evaluator_type in its metadata (is it registered?); "
            f"VLT evaluators exist for {known}"
        )
    if evaluator_type not in known:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}, which VLT cannot "
            f"evaluate; known types: {known} (register more in EVALUATOR_REGISTRY)"
        )
    if cfg.TEST.SUBMISSION.DIR and evaluator_type == "dg_sem_seg":
        writer = SubmissionWriter(
            dataset_name, cfg.TEST.SUBMISSION.DIR, cfg.TEST.SUBMISSION.FORMAT, distributed=True
        )
        if not hasattr(MetadataCatalog.get(dataset_name), "sem_seg_root"):
            return writer
        return DatasetEvaluators([dg_sem_seg(cfg, dataset_name, output_folder), writer])
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_folder)
