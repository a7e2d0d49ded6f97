"""COCO detection evaluation of any COCO file, with categories matched to the model's by name.

Detectron2's ``COCOEvaluator`` assumes the file's categories are exactly the model's classes, in
the order of their ids: with another id order it prints per-class AP under the wrong names, and a
file with extra categories (traffic light, ...) or only some classes (car only) ends in an
``AssertionError`` after the whole inference pass. :class:`DGCOCOEvaluator` matches the file's
categories to the model's ``thing_classes`` by name (:func:`canonical_class_name`), evaluates the
classes both have with the official COCO API, names the ones left out once, and reports per-class
AP under the file's own category of each class.
"""
import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from pycocotools.cocoeval import COCOeval

from vlt_common.label_spaces import canonical_class_name
from vlt_common.utils.atomic import atomic_write_bytes

__all__ = ["DGCOCOEvaluator", "shared_categories"]

logger = logging.getLogger(__name__)

# COCO's headline metrics, in the order of COCOeval.stats.
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def shared_categories(categories, class_names, source="COCO file"):
    """
    Match a COCO file's categories to a model's classes by name.

    Args:
        categories (list[dict]): the file's "categories" ({"id", "name"}).
        class_names (list[str]): the model's classes (contiguous index order).
        source (str): the file, named in errors.

    Returns:
        tuple: (``{class index: category id}`` for the shared classes, the names of the file's
        categories that are not model classes, the model classes the file does not have).

    Raises:
        ValueError: two categories are the same class, or no category is a model class.
    """
    index = {canonical_class_name(name): i for i, name in enumerate(class_names)}
    to_category, extra = {}, []
    for cat in categories:
        i = index.get(canonical_class_name(cat["name"]))
        if i is None:
            extra.append(cat["name"])
        elif i in to_category:
            raise ValueError(
                f"{source}: categories {to_category[i]} and {cat['id']} are both the class "
                f"{class_names[i]!r}; merge them into one category"
            )
        else:
            to_category[i] = cat["id"]
    if not to_category:
        raise ValueError(
            f"{source}: none of its categories {[c['name'] for c in categories]} is one of the "
            f"model's classes {list(class_names)}"
        )
    absent = [name for i, name in enumerate(class_names) if i not in to_category]
    return to_category, extra, absent


class DGCOCOEvaluator(COCOEvaluator):
    """
    Box (and mask) AP of a COCO-format test set on the classes it shares with the model.

    Collects predictions as Detectron2's ``COCOEvaluator`` does (and builds the COCO file of a
    dataset registered without one the same way). ``evaluate`` maps each predicted class index to
    the file's category of that class, drops predictions of classes the file does not have, and
    runs ``pycocotools.COCOeval`` with ``params.catIds`` set to the shared categories. Results:
    ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>", ...}}`` (and "segm" when
    the predictions have masks), in percent, per-class AP only for the shared classes.
    """

    def __init__(self, dataset_name, *, output_dir=None, distributed=True):
        """
        Args:
            dataset_name (str): a registered dataset with ``thing_classes`` (the model's classes)
                and a ``json_file`` (or dicts Detectron2 can convert to one).
            output_dir (str or None): where ``coco_instances_results.json`` is written.
            distributed (bool): gather the predictions of all ranks.
        """
        super().__init__(
            dataset_name, distributed=distributed, output_dir=output_dir, use_fast_impl=False
        )
        self._class_names = list(self._metadata.thing_classes)
        json_file = self._metadata.json_file
        categories = self._coco_api.loadCats(self._coco_api.getCatIds())
        self._to_category, extra, absent = shared_categories(
            categories, self._class_names, json_file
        )
        if extra or absent:
            logger.warning(
                "%s: evaluating the %d classes it shares with the model; not evaluated: its "
                "categories %s (not model classes) and the model classes %s (not in the file)",
                json_file, len(self._to_category), extra, absent,
            )
        # Per-class AP is reported under the model's class name of each shared category.
        self._category_names = {c: self._class_names[i] for i, c in self._to_category.items()}

    def evaluate(self, img_ids=None):
        """
        Returns:
            OrderedDict: {task: metrics} on the main process, {} on the others or without
            predictions (as Detectron2's evaluators do).
        """
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("DGCOCOEvaluator on %s received no predictions", self._metadata.name)
            return {}
        results = [r for p in predictions for r in p.get("instances", [])]
        kept = []
        for r in results:
            if r["category_id"] in self._to_category:
                kept.append(dict(r, category_id=self._to_category[r["category_id"]]))
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            atomic_write_bytes(path, json.dumps(kept))
        tasks = ["bbox"] + (["segm"] if any("segmentation" in r for r in kept) else [])
        out = OrderedDict()
        for task in tasks:
            out[task] = self._evaluate_task(kept, task, img_ids)
        return out

    def _evaluate_task(self, results, task, img_ids):
        if not results:
            logger.warning("%s: no predictions of the shared classes", self._metadata.name)
            return {m: float("nan") for m in _METRICS}
        if task == "segm":
            # Mask AP uses the mask area for small/medium/large, as in Detectron2.
            results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(self._coco_api, self._coco_api.loadRes(results), task)
            coco_eval.params.catIds = sorted(self._category_names)
            if img_ids is not None:
                coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        metrics = {
            m: float(100 * s) if s >= 0 else float("nan")
            for m, s in zip(_METRICS, coco_eval.stats)
        }
        # precision: [IoU threshold, recall, category (params.catIds order), area, max dets].
        precision = coco_eval.eval["precision"]
        for k, cat in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            metrics[f"AP-{self._category_names[cat]}"] = (
                float(100 * np.mean(p)) if p.size else float("nan")
            )
        logger.info(
            "%s %s AP: %s", self._metadata.name, task,
            ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()),
        )
        return metrics
