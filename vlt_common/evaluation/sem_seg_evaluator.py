"""Semantic-segmentation evaluation for domain generalization: one confusion matrix per dataset,
summed over DDP ranks, Detectron2's metrics, and overlays of a few predictions."""
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image
from torch.nn import functional as F

from vlt_common.data.io import read_image, read_sem_seg
from vlt_common.utils.atomic import write_json, write_png

from .visualize import sem_seg_panels

__all__ = [
    "DGSemSegEvaluator",
    "MIOU_CONVENTIONS",
    "confusion_matrix",
    "reduce_confusion_matrices",
    "sem_seg_metrics",
]

logger = logging.getLogger(__name__)


def confusion_matrix(gt, pred, num_classes, ignore_label=255):
    """
    Pixel counts of (ground truth, prediction) pairs, ignored pixels left out.

    Args:
        gt (np.ndarray): int [H, W] ground truth in 0..K-1 or ``ignore_label``.
        pred (np.ndarray): int [H, W] predictions in 0..K-1.
        num_classes (int): K.
        ignore_label (int): ground-truth value that is not counted.

    Returns:
        np.ndarray: int64 [K, K]; entry [i, j] counts pixels of class i predicted as j.
    """
    valid = gt != ignore_label
    index = num_classes * gt[valid].astype(np.int64) + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def reduce_confusion_matrices(matrices):
    """
    Sum the confusion matrices gathered from every rank.

    Args:
        matrices (list[np.ndarray]): int64 [K, K], one per rank.

    Returns:
        np.ndarray: their sum.
    """
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"confusion matrices from different ranks have different shapes {shapes}")
    return np.sum(np.stack(matrices), axis=0)


def _half(array: np.ndarray, resample) -> np.ndarray:
    """Resize an HxW(xC) uint8 array to (H // 2, W // 2) with PIL's ``resample`` filter."""
    height, width = array.shape[:2]
    return np.asarray(Image.fromarray(array).resize((width // 2, height // 2), resample=resample))


# How a class without ground-truth pixels enters the IoU and mIoU (TEST.MIOU_ABSENT_CLASSES).
MIOU_CONVENTIONS = {
    "nan": "a class absent from the ground truth has NaN IoU and is left out of the mean "
    "(Detectron2's SemSegEvaluator)",
    "zero": "a class absent from the ground truth but predicted has IoU 0 and counts in the mean; "
    "absent and not predicted, it is left out (cityscapesscripts, the benchmark servers)",
}


def sem_seg_metrics(conf, class_names, absent_classes="nan"):
    """
    Detectron2's semantic-segmentation metrics from a confusion matrix, in percent.

    A class without ground-truth pixels gets NaN accuracy. Its IoU follows ``absent_classes``
    (:data:`MIOU_CONVENTIONS`): "nan" (Detectron2) leaves it out of the mean; "zero"
    (cityscapesscripts' ``getIouScoreForLabel``) gives it IoU 0 when it was predicted, so its false
    positives count in the mean. Either way they lower the IoU of the classes they were taken from.

    Args:
        conf (np.ndarray): int [K, K], rows ground truth, columns prediction.
        class_names (list[str]): K names.
        absent_classes (str): "nan" or "zero".

    Returns:
        OrderedDict: "mIoU", "fwIoU", "IoU-<class>" per class, "mACC", "pACC", "ACC-<class>".
    """
    if absent_classes not in MIOU_CONVENTIONS:
        raise ValueError(
            f"TEST.MIOU_ABSENT_CLASSES is {absent_classes!r}; expected one of "
            f"{sorted(MIOU_CONVENTIONS)}"
        )
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    valid = pos_gt > 0
    iou = np.full(len(tp), np.nan)
    acc = np.full(len(tp), np.nan)
    iou[valid] = tp[valid] / (pos_gt[valid] + pos_pred[valid] - tp[valid])
    acc[valid] = tp[valid] / pos_gt[valid]
    if absent_classes == "zero":
        iou[~valid & (pos_pred > 0)] = 0.0
    scored = ~np.isnan(iou)
    total = pos_gt.sum()
    res = OrderedDict()
    res["mIoU"] = 100 * iou[scored].mean() if scored.any() else float("nan")
    res["fwIoU"] = 100 * np.sum(iou[valid] * pos_gt[valid] / total) if total else float("nan")
    for name, value in zip(class_names, iou):
        res[f"IoU-{name}"] = 100 * value
    res["mACC"] = 100 * acc[valid].mean() if valid.any() else float("nan")
    res["pACC"] = 100 * tp.sum() / total if total else float("nan")
    for name, value in zip(class_names, acc):
        res[f"ACC-{name}"] = 100 * value
    return res


class DGSemSegEvaluator(DatasetEvaluator):
    """
    Semantic-segmentation evaluator of one dataset (one domain) of a DG evaluation.

    ``process`` accumulates a confusion matrix; ``evaluate`` sums it over the DDP ranks and
    returns ``{"sem_seg": metrics}`` (see :func:`sem_seg_metrics`) on the main process (None on
    the others, as Detectron2's evaluators do). With an ``output_dir`` it also writes
    ``sem_seg_evaluation.json`` (metrics and confusion matrix) and, for the first ``num_vis``
    images the main process sees, ``overlays/<image>.png`` (image | prediction | ground truth).

    The dataset's metadata must have ``stuff_classes`` and ``ignore_label``; overlays use
    ``stuff_colors`` when present.

    ``half_resolution`` evaluates at half the label resolution, as official Rein evaluates
    Mapillary (its ``tools/convert_datasets/mapillary_resize.py``): the labels are resized to
    (H // 2, W // 2) with nearest neighbours, the predicted scores bilinearly to the same size.
    """

    def __init__(
        self,
        dataset_name,
        *,
        output_dir=None,
        num_vis=4,
        distributed=True,
        absent_classes="nan",
        half_resolution=False,
    ):
        """
        Args:
            dataset_name (str): a registered dataset with semantic labels.
            output_dir (str or None): where results and overlays go; None writes nothing.
            num_vis (int): overlays to write (0 disables them).
            distributed (bool): sum the confusion matrices of all ranks in ``evaluate``.
            half_resolution (bool): evaluate at half the label resolution (see the class
                docstring; TEST.DG.HALF_RESOLUTION_DATASETS).
            absent_classes (str): mIoU convention for classes absent from the ground truth,
                "nan" or "zero" (see :func:`sem_seg_metrics`).
        """
        if absent_classes not in MIOU_CONVENTIONS:
            raise ValueError(
                f"TEST.MIOU_ABSENT_CLASSES is {absent_classes!r}; expected one of "
                f"{sorted(MIOU_CONVENTIONS)}"
            )
        self._absent_classes = absent_classes
        meta = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("stuff_classes", "ignore_label") if not hasattr(meta, k)]
        if missing:
            raise ValueError(
                f"dataset {dataset_name!r} has no {missing} in its metadata; DGSemSegEvaluator "
                "needs stuff_classes and ignore_label"
            )
        self._dataset_name = dataset_name
        self._class_names = list(meta.stuff_classes)
        self._ignore_label = meta.ignore_label
        if hasattr(meta, "stuff_colors"):
            self._colors = meta.stuff_colors
        else:
            # A fixed palette, so that overlays of one dataset are comparable across runs.
            rng = np.random.default_rng(0)
            self._colors = rng.integers(0, 256, (len(self._class_names), 3)).tolist()
        self._output_dir = output_dir
        self._num_vis = num_vis
        self._distributed = distributed
        self._half_resolution = half_resolution
        self.reset()

    @property
    def num_classes(self):
        return len(self._class_names)

    def reset(self):
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._num_written = 0

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): dataset dicts with "file_name" and "sem_seg_file_name".
            outputs (list[dict]): "sem_seg": float [K, H, W] scores at the image's original
                resolution.
        """
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self.num_classes:
                raise ValueError(
                    f"prediction for {inp['file_name']} has shape {tuple(scores.shape)}; "
                    f"expected [{self.num_classes}, H, W] scores for dataset {self._dataset_name!r}"
                )
            gt = read_sem_seg(inp["sem_seg_file_name"], self.num_classes, self._ignore_label)
            if gt.shape != tuple(scores.shape[-2:]):
                raise ValueError(
                    f"prediction for image {inp['file_name']} has size (h, w)="
                    f"{tuple(scores.shape[-2:])} but "
                    f"its label map {inp['sem_seg_file_name']} has (h, w)={gt.shape}; the model "
                    "must return scores at the image's original resolution (the input dict's "
                    "'height' and 'width')"
                )
            if self._half_resolution:
                gt = _half(gt, Image.NEAREST)
                scores = F.interpolate(
                    scores[None].float(), size=gt.shape, mode="bilinear", align_corners=False
                )[0]
            pred = scores.argmax(dim=0).cpu().numpy()
            self._conf += confusion_matrix(gt, pred, self.num_classes, self._ignore_label)
            if self._output_dir and self._num_written < self._num_vis and comm.is_main_process():
                self._write_overlay(inp["file_name"], pred, gt)
                self._num_written += 1

    def _write_overlay(self, file_name, pred, gt):
        image = read_image(file_name, "RGB")
        if self._half_resolution:
            image = _half(image, Image.BICUBIC)
        if image.shape[:2] != pred.shape:
            raise ValueError(
                f"image {file_name} has size {image.shape[:2]} but its prediction {pred.shape}; "
                "predictions must be at the image's original resolution"
            )
        panels = sem_seg_panels(image, pred, gt, self._colors, self._ignore_label)
        name = os.path.splitext(os.path.basename(file_name))[0]
        write_png(os.path.join(self._output_dir, "overlays", f"{name}.png"), panels)

    def evaluate(self):
        conf = self._conf
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._conf, dst=0)
            if not comm.is_main_process():
                return None
            conf = reduce_confusion_matrices(gathered)
        if conf.sum() == 0:
            logger.warning("DGSemSegEvaluator on %s saw no labelled pixels", self._dataset_name)
        res = sem_seg_metrics(conf, self._class_names, self._absent_classes)
        if self._output_dir:
            path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
            write_json(
                path,
                {
                    "dataset": self._dataset_name,
                    "miou_absent_classes": MIOU_CONVENTIONS[self._absent_classes],
                    "metrics": {k: (None if np.isnan(v) else v) for k, v in res.items()},
                    "class_names": self._class_names,
                    "confusion_matrix (rows: ground truth, columns: prediction)": conf.tolist(),
                },
            )
        return OrderedDict(sem_seg=res)
