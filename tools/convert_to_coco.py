#!/usr/bin/env python
"""
Convert the instance annotations of Cityscapes, BDD100K and ACDC to COCO json files in VLT's
8 thing classes (person, rider, car, truck, bus, train, motorcycle, bicycle), written where the
detection datasets cityscapes_det_*, bdd100k_det_* and acdc_det_* are registered.

    python tools/convert_to_coco.py cityscapes --root datasets/cityscapes --workers 8
    python tools/convert_to_coco.py bdd100k             # root: $DETECTRON2_DATASETS/bdd100k
    python tools/convert_to_coco.py acdc --panoptic-json datasets/acdc/gt_panoptic/*.json

Outputs go to ``<root>/coco/instances_<split>.json`` (ACDC also
``instances_<condition>_<split>.json``), written atomically; existing outputs are kept unless
``--overwrite`` is given.
"""
import argparse
import logging
import os
import sys

from vlt_common.data.datasets import DATASET_DIRS, DET_SPLITS, datasets_root
from vlt_common.data.prepare.coco_converters import (
    convert_acdc,
    convert_bdd100k,
    convert_cityscapes,
)
from vlt_common.utils.atomic import write_json

DATASETS = ("cityscapes", "bdd100k", "acdc")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument(
        "--root", default=None,
        help="the dataset's folder (default: $DETECTRON2_DATASETS/<dataset folder>)",
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument(
        "--panoptic-json", nargs="+", default=[],
        help="ACDC: the COCO panoptic json files to convert",
    )
    parser.add_argument(
        "--panoptic-root", default=None,
        help="ACDC: folder holding the panoptic PNGs (default: <root>/gt_panoptic)",
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    return parser


def output_path(dataset, root, key):
    """Where the json of ``key`` ("<split>" or "<condition>_<split>") goes: the file the matching
    registered detection dataset reads, relative to the dataset folder ``root``."""
    name = f"{dataset}_det_{key}"
    if name not in DET_SPLITS:
        raise ValueError(f"{dataset} split {key!r} has no registered detection dataset")
    return os.path.join(root, os.path.relpath(DET_SPLITS[name][1], DATASET_DIRS[dataset]))


def convert(args, root):
    """Yield (output path, COCO dict) for every output that is not kept."""
    if args.dataset == "acdc":
        if not args.panoptic_json:
            raise ValueError("acdc needs --panoptic-json (the COCO panoptic json files)")
        panoptic_root = args.panoptic_root or os.path.join(root, "gt_panoptic")
        outputs = convert_acdc(root, args.panoptic_json, panoptic_root, workers=args.workers)
        for key, coco in sorted(outputs.items()):
            yield output_path("acdc", root, key), coco
        return
    for split in args.splits:
        path = output_path(args.dataset, root, split)
        if os.path.exists(path) and not args.overwrite:
            print(f"kept existing {path} (use --overwrite to rewrite it)")
            continue
        if args.dataset == "cityscapes":
            yield path, convert_cityscapes(root, split, workers=args.workers)
        else:
            labels = os.path.join(root, "labels", "det_20", f"det_{split}.json")
            images = os.path.join(root, "images", "100k", split)
            yield path, convert_bdd100k(labels, images, workers=args.workers)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.root or os.path.join(datasets_root(), DATASET_DIRS[args.dataset])
    try:
        for path, coco in convert(args, root):
            if os.path.exists(path) and not args.overwrite:
                print(f"kept existing {path} (use --overwrite to rewrite it)")
                continue
            write_json(path, coco)
            print(f"wrote {path}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
