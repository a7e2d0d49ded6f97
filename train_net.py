#!/usr/bin/env python
"""
VLT's training and evaluation entry point, for VLTSeg (segmentation) and VLTDet (detection).

It follows Detectron2's ``tools/train_net.py``; everything model- or task-specific comes from the
config and from ``vlt_common``:

    python train_net.py --config-file configs/vltseg_gta5.yaml --num-gpus 8
    python train_net.py --config-file configs/vltseg_gta5.yaml --resume          # continue a run
    python train_net.py --config-file configs/vltseg_gta5.yaml --eval-only MODEL.WEIGHTS model.pth

Without a GPU, ``--num-gpus N`` starts N CPU processes that train together over GLOO.

The projects this entry point serves are the modules of ``PROJECTS``: importing one registers its
config keys (``vlt_common.config.register_project_config``), models and mappers. A new project
(e.g. a user's) is served by adding its package here.
"""
import logging
import os

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import vlt_common.data.datasets  # noqa: F401  (registers VLT's datasets; no file is read)
import vltdet
import vltseg
from vlt_common.engine import AtomicCheckpointer, VLTTrainer, setup_cfg

# The projects (plugins) served: each registered its config keys, models and mappers on import.
PROJECTS = (vltseg, vltdet)

logger = logging.getLogger("vlt.train_net")


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = VLTTrainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return VLTTrainer.test(cfg, model)

    trainer = VLTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        logger.info("Outputs (checkpoints, metrics, report, overlays) are in %s",
                    os.path.abspath(cfg.OUTPUT_DIR))
    return results


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
