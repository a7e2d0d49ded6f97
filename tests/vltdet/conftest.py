"""Tiny VLTDet configs and batches shared by the VLTDet tests."""
import os

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances

from tests.paths import CONFIGS
from vlt_common.engine.defaults import get_vlt_cfg

# A depth-2, width-64 trunk and narrow heads, so that a training step takes about a second on a
# CPU core. The head structure (4conv1fc, LN, 2-conv RPN, cascade stages) is the recipe's.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.VLT_BACKBONE.EMBED_DIM", 64,
    "MODEL.VLT_BACKBONE.DEPTH", 2,
    "MODEL.VLT_BACKBONE.NUM_HEADS", 2,
    "MODEL.VLT_BACKBONE.DROP_PATH_RATE", 0.0,
    "MODEL.VLTDET.OUT_CHANNELS", 32,
    "MODEL.VLTDET.SQUARE_PAD", 0,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
]  # fmt: skip


@pytest.fixture
def tiny_cfg():
    """Returns a function ``(config file name, *opts) -> CfgNode`` with :data:`TINY_OPTS`."""

    def make(name="Base-VLTDet.yaml", *opts):
        cfg = get_vlt_cfg()
        cfg.merge_from_file(os.path.join(CONFIGS, name))
        cfg.merge_from_list(TINY_OPTS + list(opts))
        return cfg

    return make


@pytest.fixture
def batch():
    """Two uint8 images, 64x96 and 64x95 (not a multiple of 32), with two boxes and masks each."""
    out = []
    for h, w in [(64, 96), (64, 95)]:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 44.0], [50.0, 10.0, 90.0, 60.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 6:44, 4:40] = True
        masks[1, 10:60, 50:90] = True
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        out.append({"image": image, "instances": inst, "height": h, "width": w})
    return out
