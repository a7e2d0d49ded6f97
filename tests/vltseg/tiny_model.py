"""A tiny VLTSeg (depth-2 trunk, small Mask2Former) and random batches, shared by the model's
tests."""
from pathlib import Path

import torch

from vlt_common.engine.defaults import get_vlt_cfg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

IGNORE = 255


def tiny_cfg(**overrides):
    """Base-VLTSeg.yaml with a depth-2, width-64 trunk and a small Mask2Former head."""
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / "Base-VLTSeg.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VLT_BACKBONE.ARCH = "ViT-B-16"
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    cfg.MODEL.VLT_BACKBONE.EMBED_DIM = 64
    cfg.MODEL.VLT_BACKBONE.DEPTH = 2
    cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 2
    cfg.MODEL.VLT_BACKBONE.DROP_PATH_RATE = 0.0
    shrink_head(cfg)
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_ARCH = "ViT-B-16"
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_PRETRAINED = ""
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_WIDTH = 64
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_LAYERS = 1
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_HEADS = 2
    cfg.TEST.SLIDING_WINDOW.ENABLED = False
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def shrink_head(cfg):
    """Small Mask2Former sizes (also used by the config tests)."""
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 2
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NHEADS = 2
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    cfg.MODEL.VLT_BACKBONE.REIN.NUM_TOKENS = 8


def batch(sizes=((64, 96), (64, 95)), num_classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for h, w in sizes:
        sem_seg = torch.randint(0, num_classes, (h // 8 + 1, w // 8 + 1), generator=generator)
        sem_seg = sem_seg.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w]
        sem_seg[:4] = IGNORE
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        inputs.append({"image": image, "sem_seg": sem_seg.long(), "height": h, "width": w})
    return inputs


def assert_grads_match_requires_grad(model):
    # A gradient tensor, not a non-zero one: some parameters get an exact zero gradient at
    # initialization by design (e.g. MSDeformAttn's level embedding, whose only path runs through
    # zero-initialized sampling-offset and attention-weight projections).
    wrong = [
        name for name, p in model.named_parameters() if p.requires_grad != (p.grad is not None)
    ]
    assert not wrong, f"gradient does not match requires_grad for: {wrong[:10]}"
