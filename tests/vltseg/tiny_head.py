"""A tiny Mask2Former head config and random backbone maps, shared by the head's tests."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from vlt_common.config import add_vlt_common_config
from vltseg.config import add_vltseg_config

CHANNELS = {"res2": 16, "res3": 24, "res4": 32, "res5": 40}

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

# VLTSeg's values of Detectron2's own keys (MODEL.SEM_SEG_HEAD.*) are set by its base config.
BASE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Base-VLTSeg.yaml")


def tiny_cfg():
    """A Mask2Former config small enough for unit tests (width 64, 2 + 3 layers, 10 queries)."""
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    add_vltseg_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    head.CONVS_DIM = head.MASK_DIM = mf.HIDDEN_DIM = 64
    head.TRANSFORMER_ENC_LAYERS = 2
    head.DEFORMABLE_DIM_FEEDFORWARD = 128
    head.NUM_CLASSES = 5
    mf.NHEADS = 4
    mf.DIM_FEEDFORWARD = 128
    mf.NUM_OBJECT_QUERIES = 10
    mf.DEC_LAYERS = 4
    mf.TRAIN_NUM_POINTS = 256
    return cfg


def input_shape():
    return {k: ShapeSpec(channels=CHANNELS[k], stride=STRIDES[k]) for k in CHANNELS}


def features(batch=2, height=64, width=96, seed=0):
    """Random backbone maps of a (height, width) image; sizes round up like a strided conv."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(batch, CHANNELS[k], -(-height // s), -(-width // s), generator=g)
        for k, s in STRIDES.items()
    }
