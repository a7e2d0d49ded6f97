"""Label preparation: the official label files of each dataset converted to train-id PNGs by the
recipe of its descriptor (:class:`layouts.LabelRecipe`). The conversion itself (parallel, atomic,
resumable) is :func:`.conversion.convert_label_maps`; the output folders and names are those the
registered datasets read (:data:`layouts.SEM_SEG_SPLITS`).

BDD100K and ACDC ship train-id label maps and need no preparation.
"""
import os
from typing import List, Tuple

from ..datasets.layouts import BUILTIN_DATASETS, DATASET_DIRS, SEM_SEG_SPLITS, expected_tree
from ..datasets.sem_seg import list_files
from .conversion import ConversionSummary, convert_label_maps

__all__ = ["PREPARE_SPECS", "label_jobs", "prepare_labels"]


# The label recipe of every built-in dataset that needs one (BDD100K and ACDC do not).
PREPARE_SPECS = {
    key: dataset.labels for key, dataset in BUILTIN_DATASETS.items() if dataset.labels
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
