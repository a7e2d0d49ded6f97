"""Label preparation: which official label files each dataset converts to train-id PNGs, and how
to read them. The conversion itself (parallel, atomic, resumable) is
:func:`.conversion.convert_label_maps`; the output folders and names are those the
registered datasets read (:data:`layouts.SEM_SEG_SPLITS`).

BDD100K and ACDC ship train-id label maps and need no preparation.
"""
import dataclasses
import logging
import os
import warnings
from typing import Callable, List, Mapping, Tuple

import numpy as np
from torchvision.io import ImageReadMode, decode_png, read_file

from .conversion import ConversionSummary, convert_label_maps
from ..io import read_label_ids
from ..datasets.builtin_meta import (
    CITYSCAPES_ID_TO_TRAIN_ID,
    GTA5_ID_TO_TRAIN_ID,
    MAPILLARY_ID_TO_TRAIN_ID,
    SYNTHIA_ID_TO_TRAIN_ID,
)
from ..datasets.layouts import DATASET_DIRS, SEM_SEG_SPLITS, expected_tree
from ..datasets.sem_seg import list_files

__all__ = ["PrepareSpec", "PREPARE_SPECS", "read_synthia_label", "label_jobs", "prepare_labels"]

logger = logging.getLogger(__name__)


def read_synthia_label(path: str) -> np.ndarray:
    """
    Read a SYNTHIA ``GT/LABELS`` file: a 16-bit PNG whose first channel is the class id (the
    second is the instance id). PIL would truncate 16-bit colour PNGs to 8 bits, so torchvision
    decodes it (its image codecs are deprecated in favour of torchcodec, which is not a
    dependency; the deprecation notice is silenced here, where the call is deliberate).

    Args:
        path (str): the label file.

    Returns:
        np.ndarray: HxW uint16 class ids.

    Raises:
        ValueError: the file is missing or not a PNG; the message names it.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            label = decode_png(read_file(path), ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise ValueError(f"cannot read SYNTHIA label {path}: {e}") from e
    return label[0].numpy()


@dataclasses.dataclass(frozen=True)
class PrepareSpec:
    """
    How to prepare one dataset's labels.

    Attributes:
        splits (tuple[str]): registered names whose label maps this writes; their label folders
            hold the sources and receive the outputs.
        source_suffix (str): ending of the official label files, e.g. "_gtFine_labelIds.png".
        id_to_train_id (dict[int, int]): the official ids -> train ids.
        reader (callable): picklable ``reader(path) -> HxW ids`` for the official files.
    """

    splits: Tuple[str, ...]
    source_suffix: str
    id_to_train_id: Mapping[int, int]
    reader: Callable[[str], np.ndarray] = read_label_ids


# Cityscapes: the labels table of cityscapesscripts applied to the official *_gtFine_labelIds.png
# gives the same train-id maps as its createTrainIdLabelImgs.py (which draws the polygons).
PREPARE_SPECS = {
    "gta5": PrepareSpec(("gta5_train",), ".png", GTA5_ID_TO_TRAIN_ID),
    "synthia": PrepareSpec(
        ("synthia_train",), ".png", SYNTHIA_ID_TO_TRAIN_ID, reader=read_synthia_label
    ),
    "cityscapes": PrepareSpec(
        ("cityscapes_train", "cityscapes_val"), "_gtFine_labelIds.png", CITYSCAPES_ID_TO_TRAIN_ID
    ),
    "mapillary": PrepareSpec(
        ("mapillary_train", "mapillary_val"), ".png", MAPILLARY_ID_TO_TRAIN_ID
    ),
}


def label_jobs(dataset: str, root: str) -> List[Tuple[str, str]]:
    """
    The (official label file, train-id PNG) pairs of a dataset.

    Args:
        dataset (str): a key of :data:`PREPARE_SPECS`.
        root (str): the dataset's folder (e.g. ``datasets/gta5``).

    Returns:
        list[tuple[str, str]]: source and output paths.

    Raises:
        FileNotFoundError: a label folder is missing or holds no official label file; the message
            names it and prints the expected layout.
    """
    spec = PREPARE_SPECS[dataset]
    jobs = []
    for split in spec.splits:
        for part in SEM_SEG_SPLITS[split][1]:
            label_dir = os.path.join(root, os.path.relpath(part.label_dir, DATASET_DIRS[dataset]))
            if not os.path.isdir(label_dir):
                raise FileNotFoundError(
                    f"label folder {label_dir} does not exist.\n"
                    f"{expected_tree(dataset, os.path.dirname(os.path.abspath(root)))}"
                )
            # The outputs sit next to the sources and may share their ending (".png").
            sources = [
                rel
                for rel in list_files(label_dir, spec.source_suffix)
                if not rel.endswith(part.label_suffix)
            ]
            if not sources:
                raise FileNotFoundError(
                    f"no official label files '*{spec.source_suffix}' under {label_dir}.\n"
                    f"{expected_tree(dataset, os.path.dirname(os.path.abspath(root)))}"
                )
            for rel in sources:
                output = rel[: -len(spec.source_suffix)] + part.label_suffix
                jobs.append((os.path.join(label_dir, rel), os.path.join(label_dir, output)))
    return jobs


def prepare_labels(dataset: str, root: str, *, workers: int = 1) -> ConversionSummary:
    """
    Convert a dataset's official label maps to the train-id PNGs its registration reads.
    Resumable: outputs that already exist complete are kept.

    Args:
        dataset (str): "gta5", "synthia", "cityscapes" or "mapillary".
        root (str): the dataset's folder.
        workers (int): processes.

    Returns:
        ConversionSummary: files written / skipped, and sources with unknown ids.
    """
    if dataset not in PREPARE_SPECS:
        raise KeyError(
            f"no label preparation for {dataset!r}; datasets that need it: {sorted(PREPARE_SPECS)} "
            "(BDD100K and ACDC ship train-id label maps)"
        )
    spec = PREPARE_SPECS[dataset]
    return convert_label_maps(
        label_jobs(dataset, root),
        spec.reader,
        spec.id_to_train_id,
        workers=workers,
        desc=f"{dataset} labels",
    )
