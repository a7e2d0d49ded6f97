"""Every VLTDet yaml merges, is consistent with the recipe, and builds its model (tiny trunk)."""
import glob
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import vlt_common.data.datasets  # noqa: F401  (registers the built-in datasets)
from tests.paths import CONFIGS
from vlt_common.data.datasets.builtin_meta import THING_CLASSES
from vlt_common.data.mapper_registry import DATASET_MAPPER_REGISTRY
from vlt_common.engine.defaults import get_vlt_cfg

NAMES = sorted(
    os.path.basename(p)
    for pattern in ("Base-VLTDet*.yaml", "vltdet_*.yaml")
    for p in glob.glob(os.path.join(CONFIGS, pattern))
)
# Datasets users register themselves (README, section VLTDet).
USER_DATASETS = {"urbansyn_det_train", "urbansyn_det_val"}


def test_configs_found():
    bases = {"Base-VLTDet.yaml", "Base-VLTDet-Cascade.yaml", "vltdet_tiny_synthdg.yaml"}
    assert bases <= set(NAMES)
    for trunk in ("clip-b16", "clip-l14", "evaclip-b16", "evaclip-l14"):
        assert any(n.startswith(f"vltdet_{trunk}_") for n in NAMES), trunk


@pytest.mark.parametrize("name", NAMES)
def test_config_is_consistent(tiny_cfg, name):
    cfg = tiny_cfg(name)
    assert cfg.MODEL.BACKBONE.NAME == "build_clip_vit_sfp_backbone"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(THING_CLASSES)
    assert cfg.INPUT.DATASET_MAPPER_NAME in DATASET_MAPPER_REGISTRY
    assert cfg.MODEL.RPN.CONV_DIMS == [-1, -1]
    assert cfg.MODEL.ROI_BOX_HEAD.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "LN"
    for dataset in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        assert dataset in USER_DATASETS or dataset in DatasetCatalog.list(), dataset
    if cfg.DATASETS.TEST and cfg.TEST.DG.SOURCE_DATASET:
        assert cfg.TEST.DG.SOURCE_DATASET in cfg.DATASETS.TEST
    if cfg.MODEL.VLT_BACKBONE.ARCH.endswith("-L-14"):
        assert cfg.SOLVER.LAYER_DECAY == 0.8 and cfg.MODEL.VLT_BACKBONE.PATCH_SIZE == 16
    elif not cfg.MODEL.VLT_BACKBONE.DEPTH:
        assert cfg.SOLVER.LAYER_DECAY == 0.7


@pytest.mark.parametrize("name", NAMES)
def test_square_pad_holds_every_image(name):
    # checked on the configs as written (the tiny overrides turn the square pad off)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    square = cfg.MODEL.VLTDET.SQUARE_PAD
    if square:
        assert square >= cfg.INPUT.LSJ.IMAGE_SIZE and square >= cfg.INPUT.MAX_SIZE_TEST


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_runs(tiny_cfg, batch, name):
    cfg = tiny_cfg(name, "MODEL.VLT_BACKBONE.PRETRAINED", "")
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model([{"image": batch[1]["image"]}])
    inst = outputs[0]["instances"]
    assert inst.image_size == (64, 95)
    assert inst.has("pred_masks") == cfg.MODEL.MASK_ON
