"""Where every dataset lives under ``$DETECTRON2_DATASETS``, defined once.

Registration reads these folders, the preparation tools write the train-id label maps into them
and the COCO converters write their json files next to them, so all three agree by construction.
Each dataset keeps its official folder layout (the one its download unpacks to); the only added
files are the train-id PNGs (``*_labelTrainIds.png``, the mmsegmentation / cityscapesscripts
naming, so labels already converted by those tools are found too) and ``coco/*.json``.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

__all__ = [
    "SemSegPart",
    "DATASET_DIRS",
    "ACDC_CONDITIONS",
    "SEM_SEG_SPLITS",
    "DET_SPLITS",
    "EXPECTED_TREES",
    "expected_tree",
]

# Folder of each dataset under $DETECTRON2_DATASETS ("mapillary_vistas" as in Mask2Former).
DATASET_DIRS = {
    "gta5": "gta5",
    "synthia": "synthia",
    "cityscapes": "cityscapes",
    "bdd100k": "bdd100k",
    "mapillary": "mapillary_vistas",
    "acdc": "acdc",
}
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


# Ending of the label maps written by tools/prepare_dg_datasets.py.
_TRAIN_IDS = "_labelTrainIds.png"


def _part(dataset, image_dir, image_suffix, label_dir=None, label_suffix=None):
    root = DATASET_DIRS[dataset]
    label_dir = f"{root}/{label_dir}" if label_dir else None
    return SemSegPart(f"{root}/{image_dir}", image_suffix, label_dir, label_suffix)


def _sem_seg_splits() -> Dict[str, Tuple[str, List[SemSegPart]]]:
    """Registered name -> (dataset key, the parts it concatenates)."""
    splits = {
        # DG work trains on all 24,966 GTA5 images (Rein, VLTSeg): gta5_train.
        "gta5_train": ("gta5", [_part("gta5", "images", ".png", "labels", _TRAIN_IDS)]),
        "synthia_train": ("synthia", [_part("synthia", "RGB", ".png", "GT/LABELS", _TRAIN_IDS)]),
    }
    # GTA5's official split (split.mat of the download: trainIds / valIds / testIds, 1-based
    # image numbers): gta5_val is the source-domain validation set that rPD is relative to.
    for split in ("train", "val", "test"):
        part = _part("gta5", "images", ".png", "labels", _TRAIN_IDS)
        part = dataclasses.replace(part, split_file="gta5/split.mat", split_key=f"{split}Ids")
        splits[f"gta5_split_{split}" if split != "val" else "gta5_val"] = ("gta5", [part])
    for split in ("train", "val", "test"):
        # Test labels are not public (Cityscapes ships placeholders): no sem_seg_file_name.
        labels = (f"gtFine/{split}", "_gtFine_labelTrainIds.png") if split != "test" else ()
        part = _part("cityscapes", f"leftImg8bit/{split}", "_leftImg8bit.png", *labels)
        splits[f"cityscapes_{split}"] = ("cityscapes", [part])
    for split in ("train", "val"):
        labels = (f"labels/sem_seg/masks/{split}", ".png")
        part = _part("bdd100k", f"images/10k/{split}", ".jpg", *labels)
        splits[f"bdd100k_{split}"] = ("bdd100k", [part])
    for split, folder in (("train", "training"), ("val", "validation")):
        part = _part("mapillary", f"{folder}/images", ".jpg", f"{folder}/labels", _TRAIN_IDS)
        splits[f"mapillary_{split}"] = ("mapillary", [part])
    for split in ("train", "val", "test"):
        parts = []
        for cond in ACDC_CONDITIONS:
            labels = (f"gt/{cond}/{split}", "_gt_labelTrainIds.png") if split != "test" else ()
            parts.append(_part("acdc", f"rgb_anon/{cond}/{split}", "_rgb_anon.png", *labels))
            splits[f"acdc_{cond}_{split}"] = ("acdc", parts[-1:])
        splits[f"acdc_{split}"] = ("acdc", parts)
    return splits


# Registered semantic-segmentation name -> (dataset key, parts), relative to the datasets root.
SEM_SEG_SPLITS = _sem_seg_splits()


def _det_splits() -> Dict[str, Tuple[str, str, str]]:
    """Registered name -> (dataset key, COCO json, image root), relative to the datasets root."""
    cs, bdd, acdc = DATASET_DIRS["cityscapes"], DATASET_DIRS["bdd100k"], DATASET_DIRS["acdc"]
    acdc_images = f"{acdc}/rgb_anon"
    splits = {}
    for split in ("train", "val"):
        splits[f"cityscapes_det_{split}"] = (
            "cityscapes",
            f"{cs}/coco/instances_{split}.json",
            f"{cs}/leftImg8bit/{split}",
        )
        splits[f"bdd100k_det_{split}"] = (
            "bdd100k",
            f"{bdd}/coco/instances_{split}.json",
            f"{bdd}/images/100k/{split}",
        )
        splits[f"acdc_det_{split}"] = ("acdc", f"{acdc}/coco/instances_{split}.json", acdc_images)
        for cond in ACDC_CONDITIONS:
            json_file = f"{acdc}/coco/instances_{cond}_{split}.json"
            splits[f"acdc_det_{cond}_{split}"] = ("acdc", json_file, acdc_images)
    return splits


# Registered detection name -> (dataset key, json, image root), relative to the datasets root.
DET_SPLITS = _det_splits()

# The layout each dataset needs, printed when a folder is missing. (*): written by
# tools/prepare_dg_datasets.py <dataset>; (+): written by tools/convert_to_coco.py <dataset>.
EXPECTED_TREES = {
    "gta5": """\
gta5/                        GTA5 (download.visinf.tu-darmstadt.de/data/from_games)
  images/00001.png ...
  labels/00001.png ...       Cityscapes label ids
  labels/00001_labelTrainIds.png ...  (*)
  split.mat                  the official train/val/test split (read by gta5_val,
                             gta5_split_train, gta5_split_test)""",
    "synthia": """\
synthia/                     the RAND_CITYSCAPES folder of SYNTHIA-RAND-CITYSCAPES
  RGB/0000000.png ...
  GT/LABELS/0000000.png ...  16-bit, class id in the first channel
  GT/LABELS/0000000_labelTrainIds.png ...  (*)""",
    "cityscapes": """\
cityscapes/                  leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip
  leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
  gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
  gtFine/{train,val}/<city>/<name>_gtFine_polygons.json
  gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png  (*)
  coco/instances_{train,val}.json  (+)""",
    "bdd100k": """\
bdd100k/                     the 10k images + sem_seg labels, the 100k images + det_20 labels
  images/10k/{train,val}/<name>.jpg
  labels/sem_seg/masks/{train,val}/<name>.png  train ids, as shipped
  images/100k/{train,val}/<name>.jpg
  labels/det_20/det_{train,val}.json
  coco/instances_{train,val}.json  (+)""",
    "mapillary": """\
mapillary_vistas/            Mapillary Vistas v1.2
  {training,validation}/images/<name>.jpg
  {training,validation}/labels/<name>.png  v1.2 class ids 0..65
  {training,validation}/labels/<name>_labelTrainIds.png  (*)
  A Vistas v2.0 download keeps the v1.2 labels in {training,validation}/v1.2/labels:
  move or link that folder to {training,validation}/labels (VLT maps the 66 v1.2 classes;
  the 124 v2.0 classes in v2.0/labels are not used).""",
    "acdc": """\
acdc/                        rgb_anon_trainvaltest.zip + gt_trainval.zip + gt_panoptic_trainval.zip
  rgb_anon/{fog,night,rain,snow}/{train,val,test}/<sequence>/<name>_rgb_anon.png
  gt/{fog,night,rain,snow}/{train,val}/<sequence>/<name>_gt_labelTrainIds.png  train ids
  gt_panoptic/...            COCO panoptic json files and PNGs
  coco/instances_{train,val}.json, coco/instances_<condition>_{train,val}.json  (+)""",
}


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
