"""Every VLTSeg config merges, builds its model with tiny overrides and trains one step."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vlt_common.engine.defaults import get_vlt_cfg
from vltseg import VLTSeg

from .tiny_model import assert_grads_match_requires_grad, batch, shrink_head

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("vltseg_*.yaml")) + ["Base-VLTSeg.yaml"]


def _load(name):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


def _tiny(cfg):
    """Shrink trunk, head and text tower and drop the weight files (not present in tests)."""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    cfg.MODEL.VLT_BACKBONE.EMBED_DIM = 64
    cfg.MODEL.VLT_BACKBONE.DEPTH = 2
    cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 2
    cfg.MODEL.VLT_BACKBONE.OUT_INDICES = []  # the Rein configs' 24-block taps do not fit 2 blocks
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_PRETRAINED = ""
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_WIDTH = 64
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_LAYERS = 1
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_HEADS = 2
    shrink_head(cfg)
    return cfg


def test_all_expected_configs_exist():
    expected = {
        "vltseg_gta5.yaml",
        "vltseg_clip-b16_gta5_5k.yaml",
        "vltseg_clip-l14_gta5_5k.yaml",
        "vltseg_evaclip-b16_gta5_5k.yaml",
        "vltseg_evaclip-l14_gta5_5k.yaml",
        "vltseg_evaclip-l14_gta5_5k_ptm.yaml",
        "vltseg_evaclip-l14_cityscapes_20k.yaml",
        "vltseg_tiny_synthdg.yaml",
    }
    assert expected <= set(CONFIGS)
    for name in CONFIGS:
        first = (CONFIG_DIR / name).read_text().splitlines()[0]
        assert first.startswith("#"), f"{name} must open with a comment naming its paper target"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_trains_one_step(name):
    cfg = _tiny(_load(name))
    model = build_model(cfg)
    assert isinstance(model, VLTSeg)
    assert (model.text_head is not None) == cfg.MODEL.VLTSEG.TEXT_HEAD.ENABLED
    model.train()
    with EventStorage():
        losses = model(batch(sizes=((64, 64),)))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert_grads_match_requires_grad(model)


def test_gta5_recipe():
    cfg = _load("vltseg_gta5.yaml")
    assert cfg.MODEL.VLT_BACKBONE.ARCH == "EVA02-L-14"
    assert cfg.MODEL.VLT_BACKBONE.DROP_PATH_RATE == 0.2
    assert tuple(cfg.INPUT.RESIZE_TRAIN) == (1280, 720)
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75 and cfg.INPUT.COLOR_AUG_SSD
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER) == (16, 5000)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (1e-4, 0.05)
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE == 0.01
    assert tuple(cfg.INPUT.RESIZE_TEST) == (1024, 512)
    sw = cfg.TEST.SLIDING_WINDOW
    assert sw.ENABLED and tuple(sw.CROP_SIZE) == (512, 512) and tuple(sw.STRIDE) == (426, 426)
    assert cfg.DATASETS.TRAIN == ("gta5_train",)
    assert cfg.DATASETS.TEST == ("gta5_val", "cityscapes_val", "bdd100k_val", "mapillary_val")
    assert cfg.TEST.MIOU_ABSENT_CLASSES == "zero"
    assert cfg.INPUT.FORMAT == "RGB"
    # CLIP's mean and std, RGB order, 0-255 scale.
    torch.testing.assert_close(
        torch.tensor(cfg.MODEL.PIXEL_MEAN) / 255, torch.tensor([0.48145466, 0.4578275, 0.40821073])
    )
    torch.testing.assert_close(
        torch.tensor(cfg.MODEL.PIXEL_STD) / 255, torch.tensor([0.26862954, 0.26130258, 0.27577711])
    )
    assert _load("vltseg_evaclip-l14_gta5_5k.yaml") == cfg


@pytest.mark.parametrize(
    "name, arch",
    [
        ("vltseg_clip-b16_gta5_5k.yaml", "ViT-B-16"),
        ("vltseg_clip-l14_gta5_5k.yaml", "ViT-L-14"),
        ("vltseg_evaclip-b16_gta5_5k.yaml", "EVA02-B-16"),
        ("vltseg_evaclip-l14_gta5_5k.yaml", "EVA02-L-14"),
    ],
)
def test_backbone_configs_differ_only_in_the_backbone(name, arch):
    cfg, ref = _load(name), _load("vltseg_gta5.yaml")
    assert cfg.MODEL.VLT_BACKBONE.ARCH == arch
    cfg.MODEL.VLT_BACKBONE.ARCH = ref.MODEL.VLT_BACKBONE.ARCH
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ref.MODEL.VLT_BACKBONE.PRETRAINED
    assert cfg == ref


def test_ptm_config_turns_on_the_text_head():
    cfg = _load("vltseg_evaclip-l14_gta5_5k_ptm.yaml")
    head = cfg.MODEL.VLTSEG.TEXT_HEAD
    assert head.ENABLED and head.TEXT_ARCH == cfg.MODEL.VLT_BACKBONE.ARCH
    assert (head.CONTEXT_LENGTH, head.GAMMA_INIT, head.TEMPERATURE, head.LOSS_WEIGHT) == (
        8,
        1e-4,
        0.07,
        0.4,
    )
    # DenseCLIP's official behaviours: CLIP's own image projection, the score map joined to the
    # stride-16 map, the loss averaged over all pixels, weight decay 1e-4 of contexts and gamma
    assert cfg.MODEL.VLT_BACKBONE.CLIP_HEAD
    assert (head.CONCAT_TO, head.AVG_NON_IGNORE, head.WEIGHT_DECAY) == ("res4", False, 1e-4)


def test_cityscapes_recipe():
    cfg = _load("vltseg_evaclip-l14_cityscapes_20k.yaml")
    assert tuple(cfg.INPUT.CROP.SIZE) == (1024, 1024)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER) == (8, 20000)
    sw = cfg.TEST.SLIDING_WINDOW
    assert tuple(sw.CROP_SIZE) == (1024, 1024) and tuple(sw.STRIDE) == (768, 768)
    assert cfg.DATASETS.TRAIN == ("cityscapes_train",)
    tests = set(cfg.DATASETS.TEST)
    assert {f"acdc_{c}_val" for c in ("fog", "night", "rain", "snow")} <= tests
    assert {"bdd100k_val", "mapillary_val"} <= tests


def test_tiny_synthdg_demo():
    cfg = _load("vltseg_tiny_synthdg.yaml")
    assert cfg.DATASETS.TRAIN == ("synthdg_source_train",)
    domains = ("source", "palette", "fog", "night", "rain", "snow")
    assert cfg.DATASETS.TEST == tuple(f"synthdg_{d}_val" for d in domains)
    assert cfg.MODEL.VLT_BACKBONE.PRETRAINED == "" and 0 < cfg.MODEL.VLT_BACKBONE.DEPTH <= 4
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.MAX_ITER <= 1500
    # It builds as written (no weights needed); setup_cfg picks the CPU without CUDA.
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert model.backbone.num_layers == cfg.MODEL.VLT_BACKBONE.DEPTH
