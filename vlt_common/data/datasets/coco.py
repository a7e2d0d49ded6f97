"""Detection datasets in COCO format, in the label space of the 8 thing classes.

Every COCO json (the ones ``tools/convert_to_coco.py`` writes for Cityscapes, BDD100K and ACDC, or
a user's synthetic set such as GTA5-, UrbanSyn- or Sim10k-style data) is registered through
:func:`register_dg_coco`. Its categories are matched to :data:`THING_CLASSES` by name (with
:data:`THING_CLASS_ALIASES`), so class index i means the same class in every dataset; a car-only
json gives car boxes with the car index, not index 0. Annotations of other categories are dropped.
"""
import functools
import json
import logging
import os
from collections import Counter
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from vlt_common.label_spaces import THING_CLASSES, THING_COLORS, canonical_class_name

from .layouts import DET_SPLITS, domain_of, expected_tree

__all__ = ["thing_index", "load_dg_coco", "register_dg_coco", "register_all_dg_detection"]

logger = logging.getLogger(__name__)


def thing_index(category_name: str):
    """
    Index into :data:`THING_CLASSES` of a category name (case-insensitive, aliases accepted).

    Returns:
        int or None: the index, or None for a category outside the 8 thing classes.
    """
    name = canonical_class_name(category_name)
    return THING_CLASSES.index(name) if name in THING_CLASSES else None


def _read_categories(json_file: str) -> List[Dict]:
    with open(json_file) as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file} is not valid json: {e}") from e
    if not isinstance(content, dict) or "categories" not in content:
        raise ValueError(f"{json_file} is not a COCO instances file: it has no 'categories' list")
    return content["categories"]


def load_dg_coco(
    json_file: str, image_root: str, dataset_name: str, missing_hint: str = ""
) -> List[Dict]:
    """
    Load a COCO instances json with Detectron2's loader and map its categories to the 8 thing
    classes by name.

    Sets ``thing_dataset_id_to_contiguous_id`` (json category id -> thing index, for the COCO
    evaluator) in the metadata of ``dataset_name``, as Detectron2's own loader does.

    Args:
        json_file (str): the COCO json.
        image_root (str): the folder its image "file_name"s are relative to.
        dataset_name (str): the registered name whose metadata receives the id map.
        missing_hint (str): text appended to the error when a file is missing (the expected
            layout of a built-in dataset).

    Returns:
        list[dict]: Detectron2 dataset dicts; "category_id" is an index into THING_CLASSES.

    Raises:
        FileNotFoundError: the json or the image folder is missing.
        ValueError: the json is not a COCO instances file or shares no category with the 8.
    """
    for path, what in ((json_file, "COCO json"), (image_root, "image folder")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} does not exist.\n{missing_hint}".rstrip())
    # Detectron2's loader does not return the categories when it keeps the json's ids, so they
    # are read first (a second parse of the file, once per process).
    categories = _read_categories(json_file)
    id_map = {c["id"]: thing_index(c["name"]) for c in categories}
    id_map = {k: v for k, v in id_map.items() if v is not None}
    if not id_map:
        raise ValueError(
            f"{json_file}: none of its categories {[c['name'] for c in categories]} is one of the "
            f"thing classes {THING_CLASSES}"
        )
    # Without a dataset name, Detectron2's loader keeps the json's own category ids.
    dicts = load_coco_json(json_file, image_root, dataset_name=None)
    names = {c["id"]: c["name"] for c in categories}
    dropped = Counter()
    for record in dicts:
        kept = []
        for ann in record.get("annotations", []):
            if ann["category_id"] in id_map:
                ann["category_id"] = id_map[ann["category_id"]]
                kept.append(ann)
            else:
                dropped[names.get(ann["category_id"], ann["category_id"])] += 1
        record["annotations"] = kept
    if dropped:
        logger.info(
            "%s: dropped annotations outside the thing classes: %s", json_file, dict(dropped)
        )
    MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id = id_map
    return dicts


def register_dg_coco(
    name: str,
    json_file: str,
    image_root: str,
    *,
    missing_hint: str = "",
    domain: Optional[str] = None,
) -> None:
    """
    Register a COCO-format detection dataset in the 8-class label space (no file I/O).

    Metadata: ``thing_classes`` (:data:`THING_CLASSES`), ``thing_colors``, ``json_file``,
    ``image_root`` and ``evaluator_type`` "coco".

    Args:
        name (str): the dataset name.
        json_file (str): COCO instances json (boxes; masks optional).
        image_root (str): folder its image "file_name"s are relative to.
        missing_hint (str): text appended to the error when a file is missing.
        domain (str or None): the domain it stands for in the DG report (metadata ``domain``).
    """
    DatasetCatalog.register(
        name, functools.partial(load_dg_coco, json_file, image_root, name, missing_hint)
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(THING_CLASSES),
        thing_colors=[list(color) for color in THING_COLORS],
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
    if domain is not None:
        MetadataCatalog.get(name).domain = domain
    if missing_hint:
        MetadataCatalog.get(name).expected_layout = missing_hint


def register_all_dg_detection(root: str) -> None:
    """
    Register the detection names of :data:`layouts.DET_SPLITS` (cityscapes_det_{train,val},
    bdd100k_det_{train,val}, acdc_det_{train,val}, acdc_det_<condition>_{train,val}), pointing at
    the json files ``tools/convert_to_coco.py`` writes.

    Args:
        root (str): the datasets root ($DETECTRON2_DATASETS).
    """
    for name, (dataset, json_file, image_root) in DET_SPLITS.items():
        register_dg_coco(
            name,
            os.path.join(root, json_file),
            os.path.join(root, image_root),
            missing_hint=expected_tree(dataset, root),
            domain=domain_of(name),
        )
