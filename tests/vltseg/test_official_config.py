"""Official Mask2Former semantic-segmentation configs (the keys of the Cityscapes R50 recipe and
its Base file) merge into VLT's config and build the model they describe; keys whose values
VLTSeg cannot honour are rejected, not ignored; SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE and the
weight_dict warning behave as documented."""
import logging

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicStem, ResNet

from vlt_common.engine.defaults import get_vlt_cfg
from vltseg import VLTSeg
from vltseg.meta_arch import MaskFormer, semantic_inference

from .tiny_model import batch, tiny_cfg

# The official key set of Base-Cityscapes-SemanticSegmentation.yaml (model and solver parts),
# with the official values; written by the test, not read from the official repository.
BASE_YAML = """
MODEL:
  BACKBONE: {FREEZE_AT: 0, NAME: "build_resnet_backbone"}
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: "basic"
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
    NORM: "SyncBN"
    RES5_MULTI_GRID: [1, 1, 1]
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  MAX_ITER: 90000
  WARMUP_FACTOR: 1.0
  WARMUP_ITERS: 0
  WEIGHT_DECAY: 0.05
  OPTIMIZER: "ADAMW"
  LR_SCHEDULER_NAME: "WarmupPolyLR"
  BACKBONE_MULTIPLIER: 0.1
  CLIP_GRADIENTS: {ENABLED: True, CLIP_TYPE: "full_model", CLIP_VALUE: 0.01, NORM_TYPE: 2.0}
  AMP: {ENABLED: True}
INPUT:
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: (512, 1024)
    SINGLE_CATEGORY_MAX_AREA: 1.0
  COLOR_AUG_SSD: True
  SIZE_DIVISIBILITY: -1
  FORMAT: "RGB"
TEST:
  AUG: {ENABLED: False, MIN_SIZES: [512, 768, 1024], MAX_SIZE: 4096, FLIP: True}
VERSION: 2
"""

# The key set of maskformer2_R50_bs16_90k.yaml, official values.
MODEL_YAML = """
_BASE_: Base.yaml
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    IGNORE_VALUE: 255
    NUM_CLASSES: 19
    LOSS_WEIGHT: 1.0
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: "GN"
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: ["res3", "res4", "res5"]
    DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS: 4
    DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS: 8
    COMMON_STRIDE: 4
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 2048
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 10
    TRAIN_NUM_POINTS: 12544
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: False
      PANOPTIC_ON: False
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: 0.8
      SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: False
"""


def _official_cfg(tmp_path, *overrides):
    (tmp_path / "Base.yaml").write_text(BASE_YAML)
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(tmp_path / "model.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(overrides))
    return cfg


def test_official_semantic_config_builds_the_official_model(tmp_path):
    # Non-default deformable sizes show that the official key names are the ones read.
    cfg = _official_cfg(
        tmp_path,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", 4,
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", 2,
    )
    model = build_model(cfg).eval()
    assert type(model) is MaskFormer and isinstance(model, VLTSeg)
    assert isinstance(model.backbone, ResNet) and isinstance(model.backbone.stem, BasicStem)
    assert model.backbone.stem.conv1.out_channels == 64
    assert model.backbone.res2[0].conv1.stride == (1, 1)  # STRIDE_IN_1X1: False
    pixel_decoder, predictor = model.sem_seg_head.pixel_decoder, model.sem_seg_head.predictor
    layers = pixel_decoder.transformer.encoder.layers
    assert len(layers) == 6
    assert layers[0].self_attn.n_heads == 4 and layers[0].self_attn.n_points == 2
    assert predictor.num_layers == 9 and predictor.num_queries == 100
    assert predictor.class_embed.out_features == 20
    assert predictor.transformer_ffn_layers[0].linear1.out_features == 2048
    criterion = model.criterion
    assert criterion.weight_dict["loss_ce"] == 2.0 and criterion.weight_dict["loss_dice_8"] == 5.0
    assert len(criterion.weight_dict) == 3 * 10 and criterion.num_points == 12544
    assert model.size_divisibility == 32
    image = torch.randint(0, 256, (3, 64, 100), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 32, "width": 50}])
    assert out[0]["sem_seg"].shape == (19, 32, 50)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.RESNETS.STEM_TYPE", "deeplab", "STEM_TYPE"),
        ("MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4], "RES5_MULTI_GRID"),
        ("MODEL.MASK_FORMER.TEST.PANOPTIC_ON", True, "semantic segmentation only"),
        ("MODEL.MASK_FORMER.TEST.INSTANCE_ON", True, "semantic segmentation only"),
        ("MODEL.MASK_FORMER.TEST.SEMANTIC_ON", False, "semantic segmentation only"),
    ],
)
def test_unsupported_official_values_are_rejected(tmp_path, key, value, match):
    cfg = _official_cfg(tmp_path, key, value)
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_postprocessing_before_inference_resizes_mask_logits_first():
    cfg = tiny_cfg(**{"MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": True})
    model = build_model(cfg).eval()
    inputs = batch(sizes=((64, 90),))
    inputs[0].update(height=40, width=50)
    with torch.no_grad():
        got = model(inputs)[0]["sem_seg"]
        image = model._normalize(inputs[0]["image"])
        padded = torch.nn.functional.pad(image, (0, 96 - 90))  # size divisibility 32
        mask_cls, mask_pred = model._mask_logits(padded[None])
        # Official order: crop to the image, resize the logits, then sigmoid x softmax.
        logits = torch.nn.functional.interpolate(
            mask_pred[..., :64, :90], size=(40, 50), mode="bilinear", align_corners=False
        )
        expected = semantic_inference(mask_cls, logits)[0]
        after = model.__class__.semantic_scores(model, padded[None])[0][:, :64, :90]
        after = torch.nn.functional.interpolate(
            after[None], size=(40, 50), mode="bilinear", align_corners=False
        )[0]
    assert got.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 40, 50)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, after, atol=1e-4)  # the two orders differ
    cfg.TEST.SLIDING_WINDOW.ENABLED = True
    with pytest.raises(ValueError, match="whole-image"):
        build_model(cfg)


def test_unweighted_loss_terms_are_named_once(caplog):
    model = build_model(tiny_cfg())
    del model.criterion.weight_dict["loss_dice_0"]
    with caplog.at_level(logging.WARNING, logger="vltseg.meta_arch"):
        model.train()
        losses = model(batch())
        model(batch())
    assert "loss_dice_0" not in losses and "loss_dice_1" in losses
    warnings = [r for r in caplog.records if "without a weight" in r.getMessage()]
    assert len(warnings) == 1 and "loss_dice_0" in warnings[0].getMessage()
