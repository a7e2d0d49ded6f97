"""The Rein study configs follow official Rein's recipe (w1oves/Rein,
configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py): tapped blocks, neck, query linking,
training resize, optimizer and test protocol; the short-edge resize on hand-computed sizes and the
half-resolution evaluation of Mapillary."""
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_backbone
from PIL import Image
from torch.nn import functional as F

from vlt_common.engine.defaults import get_vlt_cfg
from vlt_common.evaluation import build_evaluator
from vltseg.data.dataset_mapper import build_semantic_augmentations
from vltseg.data.transforms import short_edge_choice_resize

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BACKBONES = ("dinov2", "evaclip", "clip")
MODES = ("rein", "frozen", "full")
STUDY = [f"vltseg_{mode}-{b}-l14_gta5_40k.yaml" for mode in MODES for b in BACKBONES]
# Official: scales=[int(512 * x * 0.1) for x in range(5, 21)], max_size=2048.
OFFICIAL_SHORT_EDGES = [int(512 * x * 0.1) for x in range(5, 21)]


def _load(name):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


@pytest.mark.parametrize("name", STUDY)
def test_study_configs_follow_the_official_rein_recipe(name):
    cfg = _load(name)
    bcfg = cfg.MODEL.VLT_BACKBONE
    assert list(bcfg.OUT_INDICES) == [7, 11, 15, 23]
    assert bcfg.NECK == "interpolate"
    # the checkpoint conversion of official Rein: bicubic 14->16 kernel, 32x32 position grid
    assert bcfg.PATCH_RESAMPLE == "interpolate" and list(bcfg.POS_EMBED_GRID) == [32, 32]
    rein = bcfg.FINETUNE == "rein"
    assert cfg.MODEL.VLTSEG.REIN.LINK_QUERIES is rein
    assert cfg.MODEL.VLTSEG.REIN.LINK_QUERY_FEATURES is True
    assert cfg.INPUT.RESIZE_TRAIN_TYPE == "short_edge_choice"
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == OFFICIAL_SHORT_EDGES
    assert cfg.INPUT.MAX_SIZE_TRAIN == 2048
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
    solver = cfg.SOLVER
    assert (solver.OPTIMIZER, solver.BASE_LR, solver.WEIGHT_DECAY) == ("ADAMW", 1e-4, 0.05)
    assert (solver.IMS_PER_BATCH, solver.MAX_ITER, solver.WARMUP_ITERS) == (4, 40000, 0)
    assert solver.LR_SCHEDULER_NAME == "WarmupPolyLR" and solver.POLY_LR_POWER == 0.9
    assert not solver.CLIP_GRADIENTS.ENABLED and not solver.AMP.ENABLED
    # Rein trains at the base lr through the backbone's adapter list, not through a
    # BACKBONE_MULTIPLIER 1.0 workaround (the VLTSeg default 0.1 stays).
    assert solver.BACKBONE_MULTIPLIER == 0.1
    sw = cfg.TEST.SLIDING_WINDOW
    assert sw.ENABLED and tuple(sw.CROP_SIZE) == (512, 512) and tuple(sw.STRIDE) == (341, 341)
    assert tuple(cfg.INPUT.RESIZE_TEST) == (1024, 512)
    assert list(cfg.TEST.DG.HALF_RESOLUTION_DATASETS) == ["mapillary_val"]


def test_rein_config_augmentations():
    augs = build_semantic_augmentations(_load("vltseg_rein-dinov2-l14_gta5_40k.yaml"), True)
    assert isinstance(augs[0], T.ResizeShortestEdge)
    assert list(augs[0].short_edge_length) == OFFICIAL_SHORT_EDGES
    assert augs[0].max_size == 2048 and augs[0].is_range is False
    assert not any(isinstance(a, T.ResizeScale) for a in augs)
    assert [type(a).__name__ for a in augs[1:]] == [
        "RandomCrop_CategoryAreaConstraint",
        "RandomFlip",
        "PhotometricDistortion",
    ]


@pytest.mark.parametrize(
    "hw, edge, expected",
    [
        # GTA5 frame 1052x1914: short edge 512 -> width 1914 * 512 / 1052 = 931.5 -> 932
        ((1052, 1914), 512, (512, 932)),
        # short edge 1024 -> width 1863.1 -> 1863, under the 2048 cap
        ((1052, 1914), 1024, (1024, 1863)),
        # a 100x1000 strip at short edge 256 -> 256x2560, capped: 204.8 -> 205 x 2048
        ((100, 1000), 256, (205, 2048)),
        # portrait: the short edge is the width; 900 * 307 / 600 = 460.5 rounds half up
        ((900, 600), 307, (461, 307)),
    ],
)
def test_short_edge_choice_resize_sizes(hw, edge, expected):
    aug = short_edge_choice_resize([edge], 2048)
    image = np.zeros((*hw, 3), dtype=np.uint8)
    transform = aug.get_transform(image)
    assert transform.apply_image(image).shape[:2] == expected
    label = np.full(hw, 7, dtype=np.uint8)
    assert transform.apply_segmentation(label).shape == expected


def test_short_edge_choice_draws_every_listed_edge():
    aug = short_edge_choice_resize(OFFICIAL_SHORT_EDGES, 2048)
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    np.random.seed(0)
    drawn = {aug.get_transform(image).new_h for _ in range(400)}
    assert drawn == set(OFFICIAL_SHORT_EDGES)


@pytest.mark.parametrize("edges, max_size", [([], 2048), ([256, -1], 2048), ([1024], 512)])
def test_short_edge_choice_rejects_bad_keys(edges, max_size):
    with pytest.raises(ValueError, match="INPUT.M"):
        short_edge_choice_resize(edges, max_size)


def test_unknown_resize_type_is_an_error():
    cfg = _load("vltseg_rein-dinov2-l14_gta5_40k.yaml")
    cfg.INPUT.RESIZE_TRAIN_TYPE = "random"
    with pytest.raises(ValueError, match="INPUT.RESIZE_TRAIN_TYPE"):
        build_semantic_augmentations(cfg, True)


def test_half_resolution_evaluation_as_official_mapillary(tmp_path):
    name = "rein_recipe_half_res"
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b", "c", "d"], ignore_label=255, evaluator_type="dg_sem_seg"
    )
    gt = np.array(
        [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 255, 255, 1, 1], [3, 3, 255, 255, 1, 1]],
        dtype=np.uint8,
    )
    pred = np.array(
        [[0, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0], [3, 3, 2, 2, 1, 1], [3, 3, 2, 2, 1, 1]]
    )
    label = str(tmp_path / "label.png")
    image = str(tmp_path / "image.png")
    Image.fromarray(gt).save(label)
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(image)
    scores = torch.nn.functional.one_hot(torch.as_tensor(pred), 4).permute(2, 0, 1).float()

    cfg = get_vlt_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.DG.NUM_VIS = 0
    cfg.TEST.DG.HALF_RESOLUTION_DATASETS = [name]
    evaluator = build_evaluator(cfg, name)
    evaluator.reset()
    evaluator.process([{"file_name": image, "sem_seg_file_name": label}], [{"sem_seg": scores}])
    # Labels: nearest to 2x3 = pixels (1, 3, 5) of rows 1 and 3: [[0, 1, 2], [3, 255, 1]].
    # Scores: bilinear x0.5 = the mean of each 2x2 block: classes [[0, 1, 0], [3, 2, 1]].
    expected = np.zeros((4, 4), dtype=np.int64)
    for g, p in [(0, 0), (1, 1), (2, 0), (3, 3), (1, 1)]:
        expected[g, p] += 1
    np.testing.assert_array_equal(evaluator._conf, expected)
    # at full resolution the same prediction counts all 20 labelled pixels
    cfg.TEST.DG.HALF_RESOLUTION_DATASETS = []
    full = build_evaluator(cfg, name)
    full.reset()
    full.process([{"file_name": image, "sem_seg_file_name": label}], [{"sem_seg": scores}])
    assert full._conf.sum() == 20


def test_rein_config_backbone_taps_blocks_7_11_15_23():
    cfg = _load("vltseg_rein-dinov2-l14_gta5_40k.yaml")
    cfg.MODEL.VLT_BACKBONE.ARCH = "ViT-B-16"  # an open_clip trunk of the same depth, tiny width
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    cfg.MODEL.VLT_BACKBONE.EMBED_DIM, cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 32, 2
    cfg.MODEL.VLT_BACKBONE.DEPTH = 24
    backbone = build_backbone(cfg)
    with torch.no_grad():
        backbone.rein.scale.zero_()  # Rein passes the tokens through unchanged
    blocks = backbone.trunk.transformer.resblocks
    taken = {}
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, args, out, i=i: taken.__setitem__(i, out))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)

    def grid(i):  # block i's patch tokens as a [1, C, 4, 6] map
        return taken[i][:, 1:].transpose(1, 2).reshape(1, 32, 4, 6)

    torch.testing.assert_close(out["res4"], grid(15), rtol=0, atol=0)
    for name, block, scale in (("res2", 7, 4.0), ("res3", 11, 2.0), ("res5", 23, 0.5)):
        expected = F.interpolate(grid(block), scale_factor=scale, mode="bilinear")
        torch.testing.assert_close(out[name], expected, rtol=0, atol=0)
