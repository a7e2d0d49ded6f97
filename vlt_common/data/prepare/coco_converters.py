"""Converters from the official instance annotations of Cityscapes, BDD100K and ACDC to COCO
instances json in the 8-class thing space (:data:`THING_CLASSES`, category ids 1..8).

- Cityscapes: ``gtFine/<split>/<city>/*_gtFine_polygons.json``. The polygons are drawn in file
  order with cityscapesscripts' own ``createInstanceImage`` (later objects cover earlier ones), so
  each object's mask, box and area are its visible part, exactly as in the official
  ``*_instanceIds.png``. "<class>group" polygons become crowd regions (iscrowd=1).
- BDD100K: the det_20 json (a list of frames with "labels" holding "category" and "box2d").
  Boxes follow Scalabel's convention of inclusive corners (width = x2 - x1 + 1). The categories
  BDD100K evaluates as ignore regions become crowd boxes (:data:`BDD100K_DET_IGNORED_AS`).
- ACDC: COCO panoptic json files and PNGs; thing segments (category ids are Cityscapes label
  ids) give masks, boxes and areas.

Masks are stored as RLE, so the same files serve box-only and mask heads. Every image of the
source annotations is kept, also those without any thing object. Images are listed with
"file_name" relative to the image root the detection datasets are registered with.
"""
import json
import logging
import os
from collections import Counter, defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from PIL import Image

from ..datasets.builtin_meta import (
    BDD100K_DET_IGNORED_AS,
    BDD100K_DET_TO_THING,
    CITYSCAPES_ID_TO_THING,
    THING_CLASSES,
)
from ..datasets.layouts import ACDC_CONDITIONS
from ..datasets.sem_seg import list_files
from ..io import read_image
from .conversion import parallel_imap

__all__ = [
    "thing_categories",
    "mask_annotation",
    "assemble_coco",
    "convert_cityscapes",
    "convert_bdd100k",
    "convert_acdc",
]

logger = logging.getLogger(__name__)

# One converted image: its COCO "images" entry (without id), its annotations (without ids) and
# the number of source objects per category that are not one of the 8 thing classes.
Record = Tuple[Dict, List[Dict], Counter]


def thing_categories() -> List[Dict]:
    """The COCO "categories" list: ids 1..8 in :data:`THING_CLASSES` order."""
    humans = ("person", "rider")
    return [
        {"id": i + 1, "name": name, "supercategory": "human" if name in humans else "vehicle"}
        for i, name in enumerate(THING_CLASSES)
    ]


def mask_annotation(mask: np.ndarray, thing: int, iscrowd: bool) -> Dict:
    """
    COCO annotation (without ids) of one binary mask.

    Args:
        mask (np.ndarray): HxW bool, not empty.
        thing (int): index into THING_CLASSES.
        iscrowd (bool): a crowd region.

    Returns:
        dict: "category_id" (thing + 1), "bbox" [x, y, w, h] of the mask's pixels, "area" (pixel
        count), "iscrowd", "segmentation" (RLE with a str "counts").
    """
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "category_id": thing + 1,
        "bbox": bbox,
        "area": float(mask_util.area(rle)),
        "iscrowd": int(iscrowd),
        "segmentation": rle,
    }


def assemble_coco(records: Sequence[Record], description: str) -> Dict:
    """
    Number the images and annotations of converted records and build the COCO dict.

    Args:
        records (list[Record]): (image entry, annotations, skipped categories) per image.
        description (str): stored in "info".

    Returns:
        dict: a COCO instances dict with "info", "images", "annotations", "categories".
    """
    images, annotations, skipped = [], [], Counter()
    for image_id, (image, anns, skipped_here) in enumerate(records, start=1):
        images.append({"id": image_id, **image})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        skipped.update(skipped_here)
    if skipped:
        logger.info(
            "%s: skipped objects outside the 8 thing classes: %s", description, dict(skipped)
        )
    logger.info("%s: %d images, %d annotations", description, len(images), len(annotations))
    return {
        "info": {"description": description, "thing_classes": list(THING_CLASSES)},
        "images": images,
        "annotations": annotations,
        "categories": thing_categories(),
    }


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid json: {e}") from e


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------


def _cityscapes_record(job: Tuple[str, str, str]) -> Record:
    json_path, image_root, file_name = job
    _require(os.path.join(image_root, file_name), "image")
    annotation = Annotation()
    try:
        annotation.fromJsonFile(json_path)
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{json_path} is not a Cityscapes polygon file: {e!r}") from e
    skipped = Counter()
    for obj in annotation.objects:
        name = obj.label[: -len("group")] if obj.label.endswith("group") else obj.label
        # createInstanceImage would print an error and exit the process on an unknown label.
        if obj.label not in name2label and name not in name2label:
            raise ValueError(f"{json_path}: unknown Cityscapes label {obj.label!r}")
        label = name2label[obj.label] if obj.label in name2label else name2label[name]
        if not obj.deleted and label.hasInstances and label.id not in CITYSCAPES_ID_TO_THING:
            skipped[label.name] += 1
    # Instance ids: class id * 1000 + k for single objects, the class id for "group" polygons.
    # Column-major, so that each mask is already in the order pycocotools encodes.
    instances = np.asfortranarray(createInstanceImage(annotation, "ids"), dtype=np.int32)
    anns = []
    # bincount finds the ids present far faster than np.unique's sort on 2-megapixel maps.
    for value in np.flatnonzero(np.bincount(instances.ravel(order="K"))):
        label_id = value // 1000 if value >= 1000 else value
        thing = CITYSCAPES_ID_TO_THING.get(int(label_id))
        if thing is not None:
            anns.append(mask_annotation(instances == value, thing, iscrowd=value < 1000))
    image = {"file_name": file_name, "height": annotation.imgHeight, "width": annotation.imgWidth}
    return image, anns, skipped


def convert_cityscapes(root: str, split: str, *, workers: int = 1) -> Dict:
    """
    Convert Cityscapes gtFine polygons of one split to COCO.

    Args:
        root (str): the Cityscapes folder (with ``leftImg8bit/`` and ``gtFine/``).
        split (str): "train" or "val".
        workers (int): processes.

    Returns:
        dict: COCO instances; file names are relative to ``leftImg8bit/<split>``.
    """
    gt_dir = os.path.join(root, "gtFine", split)
    image_root = os.path.join(root, "leftImg8bit", split)
    _require(gt_dir, "Cityscapes annotation folder")
    suffix = "_gtFine_polygons.json"
    jobs = [
        (os.path.join(gt_dir, rel), image_root, rel[: -len(suffix)] + "_leftImg8bit.png")
        for rel in list_files(gt_dir, suffix)
    ]
    if not jobs:
        raise FileNotFoundError(f"no '*{suffix}' files under {gt_dir}")
    records = list(
        parallel_imap(_cityscapes_record, jobs, workers=workers, desc=f"cityscapes {split}")
    )
    return assemble_coco(records, f"Cityscapes {split} (gtFine polygons)")


# ---------------------------------------------------------------------------------------------
# BDD100K
# ---------------------------------------------------------------------------------------------


def _bdd100k_record(job: Tuple[Dict, str]) -> Record:
    frame, image_root = job
    path = os.path.join(image_root, frame["name"])
    _require(path, "image")
    try:
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    anns, skipped = [], Counter()
    for label in frame.get("labels") or []:
        category = label["category"]
        if category in BDD100K_DET_TO_THING:
            name = BDD100K_DET_TO_THING[category]
            iscrowd = bool((label.get("attributes") or {}).get("crowd", False))
        elif category in BDD100K_DET_IGNORED_AS:
            name, iscrowd = BDD100K_DET_IGNORED_AS[category], True
        else:
            skipped[category] += 1
            continue
        box = label.get("box2d")
        if box is None:
            raise ValueError(f"{frame['name']}: label {label.get('id')} ({category}) has no box2d")
        w, h = box["x2"] - box["x1"] + 1, box["y2"] - box["y1"] + 1
        anns.append(
            {
                "category_id": THING_CLASSES.index(name) + 1,
                "bbox": [float(box["x1"]), float(box["y1"]), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": int(iscrowd),
            }
        )
    return {"file_name": frame["name"], "height": height, "width": width}, anns, skipped


def convert_bdd100k(labels_json: str, image_root: str, *, workers: int = 1) -> Dict:
    """
    Convert a BDD100K det_20 label file to COCO.

    Args:
        labels_json (str): e.g. ``bdd100k/labels/det_20/det_val.json``.
        image_root (str): e.g. ``bdd100k/images/100k/val`` (image sizes are read from the files).
        workers (int): processes.

    Returns:
        dict: COCO instances; file names are relative to ``image_root``.
    """
    _require(labels_json, "BDD100K label file")
    frames = _load_json(labels_json)
    if not isinstance(frames, list):
        raise ValueError(f"{labels_json}: expected a list of frames (the det_20 format)")
    jobs = [(frame, image_root) for frame in frames]
    desc = os.path.basename(labels_json)
    records = list(parallel_imap(_bdd100k_record, jobs, workers=workers, desc=desc))
    return assemble_coco(records, f"BDD100K {desc}")


# ---------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------


def _acdc_record(job: Tuple[Dict, str, List[Dict], Dict[int, str]]) -> Record:
    image, png_path, segments, thing_names = job
    rgb = read_image(png_path, "RGB").astype(np.int64)
    if rgb.shape[:2] != (image["height"], image["width"]):
        raise ValueError(
            f"panoptic PNG {png_path} has size (h, w)={rgb.shape[:2]} but its image entry says "
            f"{(image['height'], image['width'])}"
        )
    # COCO panoptic encoding: segment id = R + 256 * G + 256^2 * B. Column-major, so that each
    # mask is already in the order pycocotools encodes.
    segment_ids = np.asfortranarray(rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2])
    anns, skipped = [], Counter()
    for segment in segments:
        thing = CITYSCAPES_ID_TO_THING.get(segment["category_id"])
        if thing is None:
            if segment["category_id"] in thing_names:
                skipped[thing_names[segment["category_id"]]] += 1
            continue
        mask = segment_ids == segment["id"]
        if not mask.any():
            raise ValueError(f"{png_path}: segment {segment['id']} of its json has no pixels")
        anns.append(mask_annotation(mask, thing, bool(segment.get("iscrowd", 0))))
    return image, anns, skipped


def _index_by_basename(folder: str, suffix: str) -> Dict[str, str]:
    index = {}
    for rel in list_files(folder, suffix):
        name = os.path.basename(rel)
        if name in index:
            raise ValueError(f"two files named {name} under {folder}: {index[name]} and {rel}")
        index[name] = rel
    return index


def _acdc_jobs(json_file, images, image_root, pngs, panoptic_root):
    """(image entry, PNG, segments, thing names) per annotated image of one panoptic json; None
    for an image-info file without annotations (e.g. ``test_image_info.json``)."""
    _require(json_file, "ACDC panoptic json")
    content = _load_json(json_file)
    if not isinstance(content, dict) or not ("annotations" in content or "images" in content):
        raise ValueError(f"{json_file} is not a COCO panoptic file: no 'annotations'")
    if "annotations" not in content:
        return None
    entries = {image["id"]: image for image in content.get("images", [])}
    thing_names = {c["id"]: c["name"] for c in content.get("categories", []) if c.get("isthing")}
    jobs = []
    for ann in content["annotations"]:
        entry = entries.get(ann["image_id"])
        if entry is None:
            raise ValueError(f"{json_file}: annotation of unknown image id {ann['image_id']}")
        image_name = os.path.basename(entry["file_name"])
        png_name = os.path.basename(ann["file_name"])
        if image_name not in images:
            raise FileNotFoundError(f"{json_file}: no image {image_name} under {image_root}")
        if png_name not in pngs:
            raise FileNotFoundError(
                f"{json_file}: no panoptic PNG {png_name} under {panoptic_root}"
            )
        image = {
            "file_name": images[image_name], "height": entry["height"], "width": entry["width"]
        }
        png_path = os.path.join(panoptic_root, pngs[png_name])
        jobs.append((image, png_path, ann["segments_info"], thing_names))
    return jobs


def _acdc_group(file_name: str) -> Tuple[str, str]:
    """(condition, split) of an image path under ``rgb_anon``, checked against the official
    layout ``<condition>/<split>/<sequence>/<name>``; split may be a ``*_ref`` split."""
    parts = file_name.split(os.sep)
    condition, split = parts[0], parts[1] if len(parts) > 2 else ""
    splits = ("train", "val", "test")
    if condition not in ACDC_CONDITIONS or split not in splits + tuple(f"{s}_ref" for s in splits):
        raise ValueError(
            f"ACDC image {file_name} is not under rgb_anon/<condition>/<split>/ with a condition "
            f"in {ACDC_CONDITIONS} and a split in {splits} or their '_ref' splits (the official "
            "layout)"
        )
    return condition, split


def convert_acdc(
    root: str, panoptic_jsons: Sequence[str], panoptic_root: str, *, workers: int = 1
) -> Dict[str, Dict]:
    """
    Convert ACDC panoptic annotations to COCO, per condition and split and for all conditions.

    Works on the official ``gt_panoptic/*.json``: image-info files without annotations
    (``test_image_info.json``) are skipped, an image listed in several files (per-condition and
    all-condition files overlap) is converted once, and images of the ``*_ref`` splits (the
    clear-weather reference images, which no detection split uses) are left out; each is logged
    once. Images and panoptic PNGs are found by file name (ACDC's names are unique), so the json
    files may refer to them with any folder prefix; the condition and split of an image are the
    first two folders of its path under ``rgb_anon``.

    Args:
        root (str): the ACDC folder (with ``rgb_anon/``).
        panoptic_jsons (list[str]): COCO panoptic json files (any split / condition).
        panoptic_root (str): folder holding the panoptic PNGs (searched recursively).
        workers (int): processes.

    Returns:
        dict[str, dict]: "<split>" and "<condition>_<split>" -> COCO instances; file names are
        relative to ``rgb_anon``.

    Raises:
        ValueError: a json is not COCO panoptic, an image lies outside the official layout, or
            two json files annotate the same image differently.
    """
    image_root = os.path.join(root, "rgb_anon")
    _require(image_root, "ACDC image folder")
    _require(panoptic_root, "ACDC panoptic folder")
    images = _index_by_basename(image_root, ".png")
    pngs = _index_by_basename(panoptic_root, ".png")
    jobs, source, info_only, references = {}, {}, [], Counter()
    for json_file in panoptic_jsons:
        file_jobs = _acdc_jobs(json_file, images, image_root, pngs, panoptic_root)
        if file_jobs is None:
            info_only.append(json_file)
            continue
        for job in file_jobs:
            name = job[0]["file_name"]
            condition, split = _acdc_group(name)
            if split.endswith("_ref"):
                references[split] += 1
                continue
            if name in jobs:
                if jobs[name][2] != job[2]:
                    raise ValueError(
                        f"{json_file} and {source[name]} annotate {name} differently"
                    )
                continue
            jobs[name], source[name] = job, json_file
    if info_only:
        logger.info("Skipped files without annotations (image lists): %s", info_only)
    if references:
        logger.info("Left out the clear-weather reference images: %s", dict(references))
    records = parallel_imap(
        _acdc_record, list(jobs.values()), workers=workers, desc="acdc panoptic"
    )
    groups = defaultdict(list)
    for record in records:
        condition, split = _acdc_group(record[0]["file_name"])
        groups[split].append(record)
        groups[f"{condition}_{split}"].append(record)
    return {key: assemble_coco(recs, f"ACDC {key} (panoptic)") for key, recs in groups.items()}
