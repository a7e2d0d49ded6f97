#!/usr/bin/env python
"""
Convert the official label maps of GTA5, SYNTHIA, Cityscapes and Mapillary Vistas v1.2 to the
train-id PNGs (19 Cityscapes classes, 255 = ignore) that VLT's registered datasets read.

    python tools/prepare_dg_datasets.py gta5 --root datasets/gta5 --workers 8
    python tools/prepare_dg_datasets.py cityscapes        # root: $DETECTRON2_DATASETS/cityscapes

Each output is written next to its source (``<name>_labelTrainIds.png``; Cityscapes:
``<name>_gtFine_labelTrainIds.png``) under a temporary name and renamed into place. Outputs that
already exist complete are kept, so an interrupted run is finished by running it again.
BDD100K and ACDC ship train-id label maps and need no preparation.
"""
import argparse
import logging
import os
import sys

from vlt_common.data.datasets import DATASET_DIRS, datasets_root
from vlt_common.data.datasets.prepare import PREPARE_SPECS, prepare_labels


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("dataset", choices=sorted(PREPARE_SPECS))
    parser.add_argument(
        "--root", default=None,
        help="the dataset's folder (default: $DETECTRON2_DATASETS/<dataset folder>)",
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1),
        help="processes (1: run in this process)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.root or os.path.join(datasets_root(), DATASET_DIRS[args.dataset])
    try:
        summary = prepare_labels(args.dataset, root, workers=args.workers)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.dataset}: wrote {summary.written} train-id label maps, kept {summary.skipped} "
        f"that already existed ({len(summary.unknown_ids)} sources had unknown ids) under "
        f"{os.path.abspath(root)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
