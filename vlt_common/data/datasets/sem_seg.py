"""Semantic-segmentation datasets in the 19-class Cityscapes label space.

Registration only stores paths; the folders are listed when Detectron2 asks for the dataset dicts.
A missing folder or label map then raises an error that names the path and prints the layout the
dataset needs (:data:`layouts.EXPECTED_TREES`).
"""
import functools
import logging
import os
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin_meta import CITYSCAPES_19_CLASSES, CITYSCAPES_19_COLORS, IGNORE_LABEL
from .layouts import SEM_SEG_SPLITS, SemSegPart, expected_tree

__all__ = ["list_files", "load_dg_sem_seg", "register_dg_sem_seg", "register_all_dg_sem_seg"]

logger = logging.getLogger(__name__)

# Missing label maps named in the error message (the rest are counted).
_MAX_NAMED = 5


def list_files(folder: str, suffix: str) -> List[str]:
    """
    All files under ``folder`` (recursively, following symlinks) whose name ends with ``suffix``.

    Args:
        folder (str): the folder.
        suffix (str): e.g. "_leftImg8bit.png".

    Returns:
        list[str]: paths relative to ``folder``, sorted.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if name.endswith(suffix):
                found.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(found)


def _require_dir(path: str, what: str, dataset: str, root: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{what} folder {path} does not exist.\n{expected_tree(dataset, root)}"
        )


def _load_part(part: SemSegPart, dataset: str, root: str) -> List[Dict]:
    _require_dir(part.image_dir, "image", dataset, root)
    images = list_files(part.image_dir, part.image_suffix)
    if not images:
        raise FileNotFoundError(
            f"no images '*{part.image_suffix}' under {part.image_dir}.\n"
            f"{expected_tree(dataset, root)}"
        )
    stems = [rel[: -len(part.image_suffix)] for rel in images]
    labelled = part.label_dir is not None
    if labelled:
        _require_dir(part.label_dir, "label", dataset, root)
        labels = set(list_files(part.label_dir, part.label_suffix))
        missing = [s + part.label_suffix for s in stems if s + part.label_suffix not in labels]
        if missing:
            named = ", ".join(os.path.join(part.label_dir, m) for m in missing[:_MAX_NAMED])
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} images under {part.image_dir} have no label map "
                f"(e.g. {named}).\n{expected_tree(dataset, root)}"
            )
    dicts = []
    for rel, stem in zip(images, stems):
        record = {
            "file_name": os.path.join(part.image_dir, rel),
            "image_id": os.path.basename(stem),
        }
        if labelled:
            record["sem_seg_file_name"] = os.path.join(part.label_dir, stem + part.label_suffix)
        dicts.append(record)
    return dicts


def load_dg_sem_seg(parts: Sequence[SemSegPart], dataset: str, root: str) -> List[Dict]:
    """
    List the images (and train-id label maps) of a semantic-segmentation dataset.

    Height and width are left out on purpose: reading every image header would make listing a
    dataset slow on network storage; Detectron2's mappers take them from the decoded image.

    Args:
        parts (list[SemSegPart]): folders to concatenate, with absolute paths.
        dataset (str): key of :data:`layouts.EXPECTED_TREES` shown when something is missing.
        root (str): the datasets root (only used in error messages).

    Returns:
        list[dict]: Detectron2 dataset dicts with "file_name", "image_id" (the file name without
        its suffix) and, for labelled parts, "sem_seg_file_name".

    Raises:
        FileNotFoundError: a folder is missing or empty, or an image has no label map; the
            message names the path and prints the expected layout.
        ValueError: two images share an image id.
    """
    dicts = [d for part in parts for d in _load_part(part, dataset, root)]
    seen = {}
    for d in dicts:
        other = seen.setdefault(d["image_id"], d["file_name"])
        if other != d["file_name"]:
            raise ValueError(
                f"image id {d['image_id']!r} is used by both {other} and {d['file_name']}"
            )
    folders = ", ".join(part.image_dir for part in parts)
    logger.info(f"Loaded {len(dicts)} images of {dataset} from {folders}")
    return dicts


def register_dg_sem_seg(name: str, parts: Sequence[SemSegPart], dataset: str, root: str) -> None:
    """
    Register a semantic-segmentation dataset in the 19-class label space (no file I/O).

    Args:
        name (str): the dataset name, e.g. "cityscapes_val".
        parts (list[SemSegPart]): its folders, relative to ``root`` (or absolute).
        dataset (str): key of :data:`layouts.EXPECTED_TREES`.
        root (str): the datasets root ($DETECTRON2_DATASETS).
    """
    parts = [part.under(root) for part in parts]
    DatasetCatalog.register(name, functools.partial(load_dg_sem_seg, parts, dataset, root))
    metadata = {
        "stuff_classes": list(CITYSCAPES_19_CLASSES),
        "stuff_colors": [list(color) for color in CITYSCAPES_19_COLORS],
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "dg_sem_seg",
        "image_root": os.path.commonpath([part.image_dir for part in parts]),
    }
    if all(part.label_dir for part in parts):
        metadata["sem_seg_root"] = os.path.commonpath([part.label_dir for part in parts])
    MetadataCatalog.get(name).set(**metadata)


def register_all_dg_sem_seg(root: str) -> None:
    """
    Register every semantic-segmentation name of :data:`layouts.SEM_SEG_SPLITS`: gta5_train,
    synthia_train, cityscapes_{train,val,test}, bdd100k_{train,val}, mapillary_{train,val},
    acdc_{train,val,test} and acdc_{fog,night,rain,snow}_{train,val,test}.

    Args:
        root (str): the datasets root ($DETECTRON2_DATASETS).
    """
    for name, (dataset, parts) in SEM_SEG_SPLITS.items():
        register_dg_sem_seg(name, parts, dataset, root)
