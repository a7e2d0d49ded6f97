"""Every built-in dataset, described once.

One :class:`DatasetDescriptor` per dataset says where it lives under ``$DETECTRON2_DATASETS``,
which names it registers (semantic segmentation and detection), the tree it expects (printed when
something is missing), how its official labels become train ids (:class:`LabelRecipe`, run by
``tools/prepare_dg_datasets.py``) and the domain each registered name stands for in the DG report.
Registration, the preparation tools and the COCO converters all read these descriptors, so they
agree by construction and a new dataset is one more descriptor in :data:`BUILTIN_DATASETS`.

Each dataset keeps its official folder layout (the one its download unpacks to); the only added
files are the train-id PNGs (``*_labelTrainIds.png``, the mmsegmentation / cityscapesscripts
naming, so labels already converted by those tools are found too) and ``coco/*.json``.
"""
import dataclasses
import os
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..io import read_label_ids, read_synthia_label
from .builtin_meta import (
    CITYSCAPES_ID_TO_TRAIN_ID,
    GTA5_ID_TO_TRAIN_ID,
    MAPILLARY_ID_TO_TRAIN_ID,
    SYNTHIA_ID_TO_TRAIN_ID,
)

__all__ = [
    "SemSegPart",
    "LabelRecipe",
    "DatasetDescriptor",
    "BUILTIN_DATASETS",
    "DATASET_DIRS",
    "ACDC_CONDITIONS",
    "SEM_SEG_SPLITS",
    "DET_SPLITS",
    "EXPECTED_TREES",
    "expected_tree",
    "domain_of",
]

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


@dataclasses.dataclass(frozen=True)
class SemSegPart:
    """
    One folder of images (searched recursively) and the folder of their train-id label maps.

    The label map of ``<image_dir>/<rel>/<name><image_suffix>`` is
    ``<label_dir>/<rel>/<name><label_suffix>``.

    Attributes:
        image_dir (str): image folder, relative to the datasets root (or absolute).
        image_suffix (str): ending of the image file names, e.g. "_leftImg8bit.png".
        label_dir (str or None): label folder; None for splits without public labels.
        label_suffix (str or None): ending of the label file names.
        split_file (str or None): a MATLAB file listing the images of this part by number (the
            image file names are those numbers, e.g. GTA5's ``split.mat``); None: every image.
        split_key (str or None): the variable of ``split_file`` that holds the 1-based numbers.
    """

    image_dir: str
    image_suffix: str
    label_dir: Optional[str] = None
    label_suffix: Optional[str] = None
    split_file: Optional[str] = None
    split_key: Optional[str] = None

    def under(self, root: str) -> "SemSegPart":
        """The same part with its paths joined to ``root`` (string operations only)."""
        return dataclasses.replace(
            self,
            image_dir=os.path.join(root, self.image_dir),
            label_dir=os.path.join(root, self.label_dir) if self.label_dir else None,
            split_file=os.path.join(root, self.split_file) if self.split_file else None,
        )


@dataclasses.dataclass(frozen=True)
class LabelRecipe:
    """
    How ``tools/prepare_dg_datasets.py`` converts a dataset's official label files.

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


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """
    One built-in dataset. Paths are relative to the dataset's ``folder``.

    Attributes:
        folder (str): its folder under ``$DETECTRON2_DATASETS``.
        domain (str): the domain its registered names stand for in the DG report.
        tree (str): the expected layout, for error messages ("(*)": written by
            prepare_dg_datasets.py, "(+)": written by convert_to_coco.py).
        sem_seg (dict): registered name -> tuple of :class:`SemSegPart`.
        det (dict): registered name -> (COCO json, image root).
        labels (LabelRecipe or None): the label preparation; None when the download ships
            train-id maps.
        domains (dict): registered name -> domain, where it differs from ``domain``.
    """

    folder: str
    domain: str
    tree: str
    sem_seg: Mapping[str, Tuple[SemSegPart, ...]]
    det: Mapping[str, Tuple[str, str]] = dataclasses.field(default_factory=dict)
    labels: Optional[LabelRecipe] = None
    domains: Mapping[str, str] = dataclasses.field(default_factory=dict)


# Ending of the label maps written by tools/prepare_dg_datasets.py.
_TRAIN_IDS = "_labelTrainIds.png"


def _gta5() -> DatasetDescriptor:
    # DG work trains on all 24,966 images (Rein, VLTSeg): gta5_train. The official split
    # (split.mat: trainIds / valIds / testIds, 1-based image numbers) gives gta5_val, the
    # source-domain validation set that rPD is relative to, and gta5_split_{train,test}.
    every = SemSegPart("images", ".png", "labels", _TRAIN_IDS)
    sem_seg = {"gta5_train": (every,)}
    for split in ("train", "val", "test"):
        name = "gta5_val" if split == "val" else f"gta5_split_{split}"
        part = dataclasses.replace(every, split_file="split.mat", split_key=f"{split}Ids")
        sem_seg[name] = (part,)
    tree = """\
gta5/                        GTA5 (download.visinf.tu-darmstadt.de/data/from_games)
  images/00001.png ...
  labels/00001.png ...       Cityscapes label ids
  labels/00001_labelTrainIds.png ...  (*)
  split.mat                  the official train/val/test split (read by gta5_val,
                             gta5_split_train, gta5_split_test)"""
    labels = LabelRecipe(("gta5_train",), ".png", GTA5_ID_TO_TRAIN_ID)
    return DatasetDescriptor("gta5", "GTA5", tree, sem_seg, labels=labels)


def _synthia() -> DatasetDescriptor:
    sem_seg = {"synthia_train": (SemSegPart("RGB", ".png", "GT/LABELS", _TRAIN_IDS),)}
    tree = """\
synthia/                     the RAND_CITYSCAPES folder of SYNTHIA-RAND-CITYSCAPES
  RGB/0000000.png ...
  GT/LABELS/0000000.png ...  16-bit, class id in the first channel
  GT/LABELS/0000000_labelTrainIds.png ...  (*)"""
    labels = LabelRecipe(
        ("synthia_train",), ".png", SYNTHIA_ID_TO_TRAIN_ID, reader=read_synthia_label
    )
    return DatasetDescriptor("synthia", "SYNTHIA", tree, sem_seg, labels=labels)


def _cityscapes() -> DatasetDescriptor:
    sem_seg, det = {}, {}
    for split in ("train", "val", "test"):
        # Test labels are not public (Cityscapes ships placeholders): no sem_seg_file_name.
        labels = (f"gtFine/{split}", "_gtFine_labelTrainIds.png") if split != "test" else ()
        sem_seg[f"cityscapes_{split}"] = (
            SemSegPart(f"leftImg8bit/{split}", "_leftImg8bit.png", *labels),
        )
    for split in ("train", "val"):
        det[f"cityscapes_det_{split}"] = (f"coco/instances_{split}.json", f"leftImg8bit/{split}")
    tree = """\
cityscapes/                  leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip
  leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
  gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
  gtFine/{train,val}/<city>/<name>_gtFine_polygons.json
  gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png  (*)
  coco/instances_{train,val}.json  (+)"""
    # cityscapesscripts' labels table applied to the official *_gtFine_labelIds.png gives the
    # same train-id maps as its createTrainIdLabelImgs.py (which draws the polygons).
    labels = LabelRecipe(
        ("cityscapes_train", "cityscapes_val"), "_gtFine_labelIds.png", CITYSCAPES_ID_TO_TRAIN_ID
    )
    return DatasetDescriptor("cityscapes", "Cityscapes", tree, sem_seg, det, labels=labels)


def _bdd100k() -> DatasetDescriptor:
    sem_seg, det = {}, {}
    for split in ("train", "val"):
        sem_seg[f"bdd100k_{split}"] = (
            SemSegPart(f"images/10k/{split}", ".jpg", f"labels/sem_seg/masks/{split}", ".png"),
        )
        det[f"bdd100k_det_{split}"] = (f"coco/instances_{split}.json", f"images/100k/{split}")
    tree = """\
bdd100k/                     the 10k images + sem_seg labels, the 100k images + det_20 labels
  images/10k/{train,val}/<name>.jpg
  labels/sem_seg/masks/{train,val}/<name>.png  train ids, as shipped
  images/100k/{train,val}/<name>.jpg
  labels/det_20/det_{train,val}.json
  coco/instances_{train,val}.json  (+)"""
    return DatasetDescriptor("bdd100k", "BDD100K", tree, sem_seg, det)


def _mapillary() -> DatasetDescriptor:
    sem_seg = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        sem_seg[f"mapillary_{split}"] = (
            SemSegPart(f"{folder}/images", ".jpg", f"{folder}/labels", _TRAIN_IDS),
        )
    tree = """\
mapillary_vistas/            Mapillary Vistas v1.2
  {training,validation}/images/<name>.jpg
  {training,validation}/labels/<name>.png  v1.2 class ids 0..65
  {training,validation}/labels/<name>_labelTrainIds.png  (*)
  A Vistas v2.0 download keeps the v1.2 labels in {training,validation}/v1.2/labels:
  move or link that folder to {training,validation}/labels (VLT maps the 66 v1.2 classes;
  the 124 v2.0 classes in v2.0/labels are not used)."""
    labels = LabelRecipe(("mapillary_train", "mapillary_val"), ".png", MAPILLARY_ID_TO_TRAIN_ID)
    # "mapillary_vistas" as in Mask2Former.
    return DatasetDescriptor("mapillary_vistas", "Mapillary", tree, sem_seg, labels=labels)


def _acdc() -> DatasetDescriptor:
    sem_seg, det, domains = {}, {}, {}
    for split in ("train", "val", "test"):
        parts = []
        for cond in ACDC_CONDITIONS:
            labels = (f"gt/{cond}/{split}", "_gt_labelTrainIds.png") if split != "test" else ()
            parts.append(SemSegPart(f"rgb_anon/{cond}/{split}", "_rgb_anon.png", *labels))
            sem_seg[f"acdc_{cond}_{split}"] = (parts[-1],)
            domains[f"acdc_{cond}_{split}"] = cond
        sem_seg[f"acdc_{split}"] = tuple(parts)
    for split in ("train", "val"):
        det[f"acdc_det_{split}"] = (f"coco/instances_{split}.json", "rgb_anon")
        for cond in ACDC_CONDITIONS:
            det[f"acdc_det_{cond}_{split}"] = (f"coco/instances_{cond}_{split}.json", "rgb_anon")
            domains[f"acdc_det_{cond}_{split}"] = cond
    tree = """\
acdc/                        rgb_anon_trainvaltest.zip + gt_trainval.zip + gt_panoptic_trainval.zip
  rgb_anon/{fog,night,rain,snow}/{train,val,test}/<sequence>/<name>_rgb_anon.png
  gt/{fog,night,rain,snow}/{train,val}/<sequence>/<name>_gt_labelTrainIds.png  train ids
  gt_panoptic/...            COCO panoptic json files and PNGs
  coco/instances_{train,val}.json, coco/instances_<condition>_{train,val}.json  (+)"""
    return DatasetDescriptor("acdc", "ACDC", tree, sem_seg, det, domains=domains)


# The built-in datasets, by key (the argument of the preparation tools).
BUILTIN_DATASETS: Dict[str, DatasetDescriptor] = {
    "gta5": _gta5(),
    "synthia": _synthia(),
    "cityscapes": _cityscapes(),
    "bdd100k": _bdd100k(),
    "mapillary": _mapillary(),
    "acdc": _acdc(),
}


# Views of the descriptors, relative to the datasets root.
# Dataset key -> its folder under $DETECTRON2_DATASETS.
DATASET_DIRS = {key: d.folder for key, d in BUILTIN_DATASETS.items()}
# Registered semantic-segmentation name -> (dataset key, the parts it concatenates).
SEM_SEG_SPLITS: Dict[str, Tuple[str, List[SemSegPart]]] = {
    name: (key, [part.under(d.folder) for part in parts])
    for key, d in BUILTIN_DATASETS.items()
    for name, parts in d.sem_seg.items()
}
# Registered detection name -> (dataset key, COCO json, image root).
DET_SPLITS: Dict[str, Tuple[str, str, str]] = {
    name: (key, os.path.join(d.folder, json_file), os.path.join(d.folder, image_root))
    for key, d in BUILTIN_DATASETS.items()
    for name, (json_file, image_root) in d.det.items()
}
# Dataset key -> its expected layout.
EXPECTED_TREES = {key: d.tree for key, d in BUILTIN_DATASETS.items()}


def domain_of(name: str) -> str:
    """The domain a registered built-in name stands for (an ACDC condition, or the dataset)."""
    key = SEM_SEG_SPLITS[name][0] if name in SEM_SEG_SPLITS else DET_SPLITS[name][0]
    dataset = BUILTIN_DATASETS[key]
    return dataset.domains.get(name, dataset.domain)


def expected_tree(dataset: str, root: str) -> str:
    """The expected layout of ``dataset`` under the datasets root ``root``, for error messages."""
    tree = EXPECTED_TREES[dataset]
    lines = [f"Expected layout under {root} ($DETECTRON2_DATASETS):", tree]
    if "(*)" in tree:
        lines.append(f"(*) written by: python tools/prepare_dg_datasets.py {dataset}")
    if "(+)" in tree:
        lines.append(f"(+) written by: python tools/convert_to_coco.py {dataset}")
    lines.append("The README section on datasets has the download links.")
    return "\n".join(lines)
