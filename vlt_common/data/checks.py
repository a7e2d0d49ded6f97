"""Fail fast: check every dataset of a run before the first iteration.

An empty or unreadable test set used to surface only after training, when its loader was built,
and the run ended without a report. :func:`check_datasets` lists every dataset of
``DATASETS.TRAIN`` and ``DATASETS.TEST`` and reads the first image and its label, so that such a
run stops in seconds with an error naming the path (and, for built-in datasets, the expected
layout).
"""
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog

from .corruptions import register_corrupted_datasets
from .io import read_image, read_label_ids

__all__ = ["check_dataset", "check_datasets"]

logger = logging.getLogger(__name__)


def _where(name):
    """The folders or file a registered dataset reads, from its metadata, for messages."""
    meta = MetadataCatalog.get(name)
    keys = ("json_file", "image_root", "sem_seg_root")
    found = [f"{k}={getattr(meta, k)}" for k in keys if hasattr(meta, k)]
    return ", ".join(found) or "no paths in its metadata"


def check_dataset(name):
    """
    Check one registered dataset: it lists without error, is not empty, and its first image and
    first label (label map or box annotations) are readable with the same size.

    Args:
        name (str): a name registered in Detectron2's ``DatasetCatalog``.

    Raises:
        KeyError: the name is not registered.
        FileNotFoundError, ValueError: a folder or file is missing, the dataset is empty, or the
            first image or label cannot be read or disagree in size; the message names the path
            (and the registered loader's message, with the expected layout, is kept).
    """
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {name!r} is not registered; registered names include "
            f"{sorted(DatasetCatalog.list())[:20]} ... (see the README's Datasets section)"
        )
    dicts = DatasetCatalog.get(name)
    if not dicts:
        layout = getattr(MetadataCatalog.get(name), "expected_layout", "")
        raise ValueError(f"dataset {name!r} is empty ({_where(name)})\n{layout}".rstrip())
    first = dicts[0]
    image = read_image(first["file_name"])
    image_hw = tuple(image.shape[:2])
    stated_hw = (first.get("height"), first.get("width"))
    if None not in stated_hw and tuple(stated_hw) != image_hw:
        raise ValueError(
            f"dataset {name!r}: image {first['file_name']} has size (h, w)={image_hw} but its "
            f"annotation says (h, w)={tuple(stated_hw)} ({_where(name)})"
        )
    if "sem_seg_file_name" in first:
        label_hw = tuple(read_label_ids(first["sem_seg_file_name"]).shape)
        if label_hw != image_hw:
            raise ValueError(
                f"dataset {name!r}: label map {first['sem_seg_file_name']} has size "
                f"(h, w)={label_hw} but its image {first['file_name']} has (h, w)={image_hw}"
            )
    logger.info("Dataset %s: %d images, first image and label readable", name, len(dicts))


def check_datasets(cfg):
    """
    Check every dataset of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` with :func:`check_dataset`,
    before anything long starts (the trainer calls it first). All failures are reported together.

    Args:
        cfg (CfgNode): reads ``DATASETS.TRAIN`` and ``DATASETS.TEST``.

    Raises:
        ValueError: one or more datasets failed; the message has one block per dataset, with the
            config key it comes from, the path and the expected layout.
    """
    failures = []
    entries = [("DATASETS.TRAIN", n) for n in cfg.DATASETS.TRAIN]
    entries += [("DATASETS.TEST", n) for n in cfg.DATASETS.TEST]
    for key, name in dict.fromkeys(entries):
        try:
            if key == "DATASETS.TEST":
                # corrupted test domains are registered on demand, also when the trainer is
                # built from Python without setup_cfg (which registers them for train_net.py)
                register_corrupted_datasets([name])
            check_dataset(name)
        except (KeyError, FileNotFoundError, ValueError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            failures.append(f"{key} entry {name!r}: {message}")
    if failures:
        raise ValueError(
            f"{len(failures)} dataset(s) of the config cannot be used (checked before "
            "training):\n\n"
            + "\n\n".join(failures)
        )
