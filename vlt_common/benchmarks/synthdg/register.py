"""SynthDG in Detectron2's catalogs: one semantic and one detection dataset per domain and split.

Names: ``synthdg_<domain>_<split>`` (semantic segmentation, evaluator_type "dg_sem_seg") and
``synthdg_det_<domain>_<split>`` (detection / instance segmentation, evaluator_type "coco"), for
``split`` "val" in every domain and "train" in the spec's training domains (the source by
default). Registering reads no file; the first request of a dataset's dicts generates the copy.
"""
import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from vlt_common.label_spaces import (
    CITYSCAPES_19_CLASSES,
    CITYSCAPES_19_COLORS,
    IGNORE_LABEL,
    THING_CLASSES,
    THING_COLORS,
)

from .generate import ensure_synthdg, image_path, label_path, read_manifest, synthdg_dir
from .spec import DEFAULT_SPEC, SPLITS

__all__ = ["register_synthdg", "load_synthdg"]

def load_synthdg(root, domain, split, *, spec=DEFAULT_SPEC, instances=False):
    """
    Dataset dicts of one SynthDG domain and split, generating the copy first if needed.

    Args:
        root (str): datasets root.
        domain (str): one of ``DOMAINS``.
        split (str): "train" or "val".
        spec (SynthDGSpec): the copy to use.
        instances (bool): detection dicts ("annotations" with XYXY_ABS boxes, category ids 0..7
            into THING_CLASSES, COCO RLE masks) instead of semantic ones ("sem_seg_file_name").

    Returns:
        list[dict]: Detectron2 dataset dicts with "file_name", "height", "width", "image_id".
    """
    directory = ensure_synthdg(root, spec)
    manifest = read_manifest(directory, spec)
    entry = manifest["splits"][split]
    if domain not in entry["domains"]:
        raise KeyError(
            f"SynthDG in {directory} has no {split!r} images for domain {domain!r}; it has "
            f"{entry['domains']} (SynthDGSpec.train_domains sets the training domains)"
        )
    dicts = []
    for scene in entry["scenes"]:
        index = scene["index"]
        record = {
            "file_name": os.path.join(directory, image_path(split, domain, index)),
            "height": spec.height,
            "width": spec.width,
            "image_id": index,
        }
        if instances:
            record["annotations"] = [
                {
                    "bbox": list(ann["bbox"]),
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": ann["category_id"],
                    "segmentation": dict(ann["segmentation"]),
                    "iscrowd": 0,
                }
                for ann in scene["annotations"]
            ]
        else:
            record["sem_seg_file_name"] = os.path.join(directory, label_path(split, index))
        dicts.append(record)
    return dicts

def register_synthdg(root, spec=DEFAULT_SPEC, prefix="synthdg"):
    """
    Register every SynthDG dataset of ``spec`` under ``root``.

    Args:
        root (str): datasets root (``$DETECTRON2_DATASETS``); the copy lives in
            ``<root>/synthdg``.
        spec (SynthDGSpec): the copy's parameters.
        prefix (str): name prefix (tests register tiny copies under their own prefix).

    Returns:
        list[str]: the registered names.
    """
    directory = synthdg_dir(root)
    names = []
    for split in SPLITS:
        for domain in spec.domains(split):
            load = functools.partial(load_synthdg, root, domain, split, spec=spec)
            name = f"{prefix}_{domain}_{split}"
            DatasetCatalog.register(name, load)
            MetadataCatalog.get(name).set(
                stuff_classes=list(CITYSCAPES_19_CLASSES),
                stuff_colors=[list(c) for c in CITYSCAPES_19_COLORS],
                ignore_label=IGNORE_LABEL,
                evaluator_type="dg_sem_seg",
                domain=domain,
                image_root=os.path.join(directory, "images", domain, split),
                sem_seg_root=os.path.join(directory, "labels", split),
            )
            det_name = f"{prefix}_det_{domain}_{split}"
            DatasetCatalog.register(det_name, functools.partial(load, instances=True))
            MetadataCatalog.get(det_name).set(
                thing_classes=list(THING_CLASSES),
                thing_colors=[list(c) for c in THING_COLORS],
                evaluator_type="coco",
                domain=domain,
                image_root=os.path.join(directory, "images", domain, split),
            )
            names += [name, det_name]
    return names
