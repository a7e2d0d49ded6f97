"""Semantic-segmentation datasets in the 19-class Cityscapes label space.

Registration only stores paths; the folders are listed when Detectron2 asks for the dataset dicts.
A missing folder or label map then raises an error that names the path and, for the built-in
datasets, prints the layout the dataset needs (:data:`layouts.EXPECTED_TREES`).
"""
import functools
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin_meta import CITYSCAPES_19_CLASSES, CITYSCAPES_19_COLORS, IGNORE_LABEL
from .layouts import SEM_SEG_SPLITS, SemSegPart, domain_of, expected_tree

__all__ = [
    "list_files",
    "read_split_numbers",
    "load_dg_sem_seg",
    "register_dg_sem_seg",
    "register_all_dg_sem_seg",
]

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


def _missing(message: str, hint: str) -> FileNotFoundError:
    return FileNotFoundError(f"{message}\n{hint}".rstrip())


def read_split_numbers(split_file: str, key: str, hint: str = "") -> List[int]:
    """
    The image numbers of one split in a MATLAB split file (GTA5's ``split.mat``).

    Args:
        split_file (str): the .mat file.
        key (str): its variable, e.g. "valIds" (1-based image numbers).
        hint (str): text appended to the error when the file is missing.

    Returns:
        list[int]: the numbers, in the file's order.

    Raises:
        FileNotFoundError: the file is missing; ValueError: it is unreadable or lacks ``key``.
    """
    import scipy.io  # only for split files

    if not os.path.isfile(split_file):
        raise _missing(
            f"split file {split_file} does not exist (GTA5: split.mat of the download).", hint
        )
    try:
        content = scipy.io.loadmat(split_file)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read split file {split_file}: {e}") from e
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"split file {split_file} has no {key!r} (it has {found})")
    return [int(v) for v in content[key].ravel()]


def _select_split(part: SemSegPart, images: List[str], hint: str) -> List[str]:
    """The images of ``part``'s split file, by their number (file name without suffix)."""
    wanted = set(read_split_numbers(part.split_file, part.split_key, hint))
    selected = []
    for rel in images:
        stem = os.path.basename(rel)[: -len(part.image_suffix)]
        if stem.isdigit() and int(stem) in wanted:
            selected.append(rel)
    if len(selected) < len(wanted):
        logger.warning(
            "%s: %d of the %d images of %s are not under %s",
            part.split_file, len(wanted) - len(selected), len(wanted), part.split_key,
            part.image_dir,
        )
    return selected


def _load_part(part: SemSegPart, hint: str) -> List[Dict]:
    if not os.path.isdir(part.image_dir):
        raise _missing(f"image folder {part.image_dir} does not exist.", hint)
    images = list_files(part.image_dir, part.image_suffix)
    if part.split_file:
        images = _select_split(part, images, hint)
    if not images:
        raise _missing(f"no images '*{part.image_suffix}' under {part.image_dir}.", hint)
    stems = [rel[: -len(part.image_suffix)] for rel in images]
    labelled = part.label_dir is not None
    if labelled:
        if not os.path.isdir(part.label_dir):
            raise _missing(f"label folder {part.label_dir} does not exist.", hint)
        labels = set(list_files(part.label_dir, part.label_suffix))
        missing = [s + part.label_suffix for s in stems if s + part.label_suffix not in labels]
        if missing:
            named = ", ".join(os.path.join(part.label_dir, m) for m in missing[:_MAX_NAMED])
            raise _missing(
                f"{len(missing)} of {len(images)} images under {part.image_dir} have no label map "
                f"(e.g. {named}).",
                hint,
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


def load_dg_sem_seg(parts: Sequence[SemSegPart], missing_hint: str = "") -> List[Dict]:
    """
    List the images (and train-id label maps) of a semantic-segmentation dataset.

    Height and width are left out on purpose: reading every image header would make listing a
    dataset slow on network storage; Detectron2's mappers take them from the decoded image.

    Args:
        parts (list[SemSegPart]): folders to concatenate.
        missing_hint (str): text appended to the error when something is missing (the expected
            layout of a built-in dataset).

    Returns:
        list[dict]: Detectron2 dataset dicts with "file_name", "image_id" (the file name without
        its suffix) and, for labelled parts, "sem_seg_file_name".

    Raises:
        FileNotFoundError: a folder is missing or empty, or an image has no label map; the
            message names the path (and shows ``missing_hint``).
        ValueError: two images share an image id.
    """
    dicts = [d for part in parts for d in _load_part(part, missing_hint)]
    seen = {}
    for d in dicts:
        other = seen.setdefault(d["image_id"], d["file_name"])
        if other != d["file_name"]:
            raise ValueError(
                f"image id {d['image_id']!r} is used by both {other} and {d['file_name']}"
            )
    folders = ", ".join(part.image_dir for part in parts)
    logger.info("Loaded %d images from %s", len(dicts), folders)
    return dicts


def register_dg_sem_seg(
    name: str,
    parts: Sequence[SemSegPart],
    *,
    missing_hint: str = "",
    domain: Optional[str] = None,
) -> None:
    """
    Register a semantic-segmentation dataset in the 19-class label space (no file I/O). Also
    the way to add a dataset of one's own whose label maps hold the 19 train ids.

    Args:
        name (str): the dataset name, e.g. "cityscapes_val".
        parts (list[SemSegPart]): its folders (concatenated in order).
        missing_hint (str): text appended to the error when something is missing.
        domain (str or None): the domain it stands for in the DG report (metadata ``domain``;
            the report shows the dataset name when unset).
    """
    parts = list(parts)
    DatasetCatalog.register(name, functools.partial(load_dg_sem_seg, parts, missing_hint))
    metadata = {
        "stuff_classes": list(CITYSCAPES_19_CLASSES),
        "stuff_colors": [list(color) for color in CITYSCAPES_19_COLORS],
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "dg_sem_seg",
        "image_root": os.path.commonpath([part.image_dir for part in parts]),
    }
    if domain is not None:
        metadata["domain"] = domain
    if missing_hint:
        metadata["expected_layout"] = missing_hint
    if all(part.label_dir for part in parts):
        metadata["sem_seg_root"] = os.path.commonpath([part.label_dir for part in parts])
    MetadataCatalog.get(name).set(**metadata)


def register_all_dg_sem_seg(root: str) -> None:
    """
    Register every semantic-segmentation name of :data:`layouts.SEM_SEG_SPLITS`: gta5_train,
    gta5_val, gta5_split_{train,test}, synthia_train, cityscapes_{train,val,test},
    bdd100k_{train,val}, mapillary_{train,val}, acdc_{train,val,test} and
    acdc_{fog,night,rain,snow}_{train,val,test}.

    Args:
        root (str): the datasets root ($DETECTRON2_DATASETS).
    """
    for name, (dataset, parts) in SEM_SEG_SPLITS.items():
        parts = [part.under(root) for part in parts]
        register_dg_sem_seg(
            name, parts, missing_hint=expected_tree(dataset, root), domain=domain_of(name)
        )
