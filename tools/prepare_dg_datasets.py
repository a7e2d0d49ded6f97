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
from vlt_common.data.prepare.labels import PREPARE_SPECS, prepare_labels


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
    registered = os.path.abspath(os.path.join(datasets_root(), DATASET_DIRS[args.dataset]))
    root = args.root or registered
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
    if os.path.abspath(root) != registered:
        print(registration_note(root, registered, DATASET_DIRS[args.dataset]))
    return 0


def registration_note(root, registered, folder):
    """How to make the registered datasets (which read ``$DETECTRON2_DATASETS/<folder>``) use
    labels prepared under another ``--root``."""
    root = os.path.abspath(root)
    parent, name = os.path.split(root)
    how = f"export DETECTRON2_DATASETS={parent}" if name == folder else f"ln -s {root} {registered}"
    return (
        f"note: the registered datasets read {registered} ($DETECTRON2_DATASETS/{folder}), not "
        f"{root}; to train and evaluate on it: {how}"
    )


if __name__ == "__main__":
    sys.exit(main())
