"""``train_net.py`` on a tiny SynthDG copy, for the end-to-end tests.

The copy (a few 256x512 scenes, every domain) is generated under ``$VLT_TINY_SYNTHDG_ROOT`` and
registered as ``synthdg_tiny_<domain>_<split>`` in every process, the spawned DDP workers included,
before ``train_net.main`` runs:

    VLT_TINY_SYNTHDG_ROOT=/tmp/x python tests/engine/tiny_train_net.py --config-file ... [opts]
"""
import os

from detectron2.engine import default_argument_parser, launch

import train_net
from vlt_common.benchmarks.synthdg import SynthDGSpec, register_synthdg

TINY_SPEC = SynthDGSpec(num_train=8, num_val=3)
PREFIX = "synthdg_tiny"
DOMAINS = ("source", "palette", "fog", "night", "rain", "snow")


def tiny_opts(*, test_domains=DOMAINS):
    """Config overrides that point the tiny demo config at the tiny copy."""
    test = tuple(f"{PREFIX}_{d}_val" for d in test_domains)
    return [
        "DATASETS.TRAIN", f"('{PREFIX}_source_train',)",
        "DATASETS.TEST", str(test),
        "TEST.DG.SOURCE_DATASET", f"{PREFIX}_source_val" if test else "",
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.DG.NUM_VIS", "1",
    ]


def main(args):
    register_synthdg(os.environ["VLT_TINY_SYNTHDG_ROOT"], TINY_SPEC, prefix=PREFIX)
    return train_net.main(args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
