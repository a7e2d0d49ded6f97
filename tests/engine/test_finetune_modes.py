"""Every fine-tuning mode of MODEL.VLT_BACKBONE.FINETUNE trains the tiny VLTSeg on SynthDG through
VLTTrainer: the loss falls, the trunk changes exactly when the mode lets it, and a wholly frozen
trunk ("frozen", "rein") stays in eval mode through training, as in official Rein."""
import json
import os
import pathlib

import numpy as np
import pytest
import torch
from detectron2.utils.env import seed_all_rng

from vlt_common.benchmarks.synthdg import SynthDGSpec, register_synthdg
from vlt_common.engine import VLTTrainer, get_vlt_cfg

REPO = pathlib.Path(__file__).resolve().parents[2]
PREFIX = "synthdg_modes"
ITERS = 40
WARMUP = 20

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthdg(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthdg")
    register_synthdg(str(root), SynthDGSpec(seed=5, height=128, width=256, num_train=6, num_val=1),
                     prefix=PREFIX)
    return root


def _train(mode, output_dir):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "vltseg_tiny_synthdg.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.VLT_BACKBONE.FINETUNE", mode,
        "MODEL.VLT_BACKBONE.REIN.NUM_TOKENS", 24,  # = MASK_FORMER.NUM_OBJECT_QUERIES (linking)
        "MODEL.VLTSEG.REIN.LINK_QUERIES", mode == "rein",
        # Linked query features (the official default) start nearly equal for all queries (Rein's
        # tokens are small), so the tiny model needs far more than 40 steps to separate them.
        "MODEL.VLTSEG.REIN.LINK_QUERY_FEATURES", False,
        "MODEL.VLT_BACKBONE.DROP_PATH_RATE", 0.1,
        "SOLVER.FROZEN_BACKBONE_ITERS", WARMUP,
        "DATASETS.TRAIN", (f"{PREFIX}_source_train",),
        "DATASETS.TEST", (),
        "DATALOADER.NUM_WORKERS", 0,
        "INPUT.RESIZE_TRAIN", (256, 128),
        "INPUT.SCALE_RANGE_TRAIN", (1.0, 1.0),
        "INPUT.CROP.SIZE", (64, 128),
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", ITERS,
        "SOLVER.BASE_LR", 1e-3,
        "SOLVER.CHECKPOINT_PERIOD", 1000,
        "OUTPUT_DIR", str(output_dir),
    ])  # fmt: skip
    cfg.freeze()
    # torch, numpy and random: the sampler's order and the crops come from numpy's global state,
    # which would otherwise differ from run to run (and with it the loss after 40 steps).
    seed_all_rng(0)
    trainer = VLTTrainer(cfg)
    trunk_before = {k: v.clone() for k, v in trainer.model.backbone.trunk.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(output_dir, "metrics.json")) as f:
        losses = [json.loads(line)["total_loss"] for line in f if "total_loss" in line]
    trunk_after = trainer.model.backbone.trunk.state_dict()
    trunk_changed = any(not torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)
    return losses, trunk_changed, trainer


@pytest.mark.parametrize("mode", ["full", "frozen", "rein", "frozen_warmup"])
def test_mode_trains_with_falling_loss(mode, synthdg, tmp_path):
    losses, trunk_changed, trainer = _train(mode, tmp_path)
    # metrics.json has a row every 20 iterations (and the last): the loss of iteration 39 is
    # clearly below that of iteration 19, itself from a model that trained for 20 steps.
    assert len(losses) >= 2
    assert losses[-1] < 0.9 * losses[0], losses
    assert np.isfinite(losses).all()
    assert trunk_changed == (mode in ("full", "frozen_warmup"))
    rein = trainer.model.backbone.rein
    assert (rein is not None) == (mode == "rein")
    assert (trainer.model.query_linker is not None) == (mode == "rein")
    # the trainer put the model in training mode; a wholly frozen trunk stayed in eval mode
    assert trainer.model.training
    trunk_training = {m.training for m in trainer.model.backbone.trunk.modules()}
    assert trunk_training == ({False} if mode in ("frozen", "rein") else {True})
