"""Parity with open_clip: with the same weights, loaded through MODEL.VLT_BACKBONE.PRETRAINED from
a checkpoint file as a user would, the backbone's final-block tokens equal the output of open_clip's
own visual tower before pooling (fp32, pre-training resolution 224, native patch size)."""
import functools

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from tests.vlt_common.tiny_backbone import single_cfg
from vlt_common.modeling.backbone import CLIPViTBackbone

TOLERANCE = 1e-5
TINY_TEXT = dict(width=32, layers=1, heads=2, context_length=8, vocab_size=100)


def _perturb(model):
    """Random, non-trivial values everywhere (timm zero-inits some biases and layer norms)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@torch.no_grad()
def _max_parity_error(reference, cfg, tmp_path, depth):
    """Save ``reference`` (a full CLIP model) as users have it, load it through the config and
    compare the final-block maps with open_clip's ``forward_intermediates``."""
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = str(path)
    multi_cfg = cfg.clone()
    multi_cfg.MODEL.VLT_BACKBONE.OUTPUT = "multiscale"
    multi_cfg.MODEL.VLT_BACKBONE.OUT_FEATURES = ["res4"]
    multi_cfg.MODEL.VLT_BACKBONE.OUT_INDICES = [0, 0, depth - 2, depth - 1]
    single, multi = CLIPViTBackbone(cfg).eval(), CLIPViTBackbone(multi_cfg).eval()
    x = torch.randn(2, 3, 224, 224)
    taps = reference.visual.forward_intermediates(
        x, indices=[depth - 2, depth - 1], intermediates_only=True
    )["image_intermediates"]
    # "single": the last block's tokens; multiscale res4 (identity path): block depth - 2.
    return max(
        (single(x)["last_feat"] - taps[1]).abs().max().item(),
        (multi(x)["res4"] - taps[0]).abs().max().item(),
    )


def test_vit_b_16_parity_tiny(tmp_path):
    vision = dict(width=64, layers=2, head_width=32, patch_size=16, image_size=224)
    reference = _perturb(CLIP(32, vision_cfg=vision, text_cfg=TINY_TEXT))
    cfg = single_cfg("ViT-B-16")
    assert _max_parity_error(reference, cfg, tmp_path, depth=2) < TOLERANCE


def test_eva02_b_16_parity_tiny(tmp_path, monkeypatch):
    # open_clip builds the EVA02-B-16 tower as a timm trunk inside its TimmModel; shrink that
    # timm model while open_clip builds the reference, then build ours from the config.
    with monkeypatch.context() as patch:
        shrunk = functools.partial(
            open_clip.timm_model.timm.create_model, embed_dim=64, depth=2, num_heads=2
        )
        patch.setattr(open_clip.timm_model.timm, "create_model", shrunk)
        vision = open_clip.get_model_config("EVA02-B-16")["vision_cfg"]
        reference = _perturb(CustomTextCLIP(32, vision_cfg=vision, text_cfg=TINY_TEXT))
    assert reference.visual.trunk.embed_dim == 64
    cfg = single_cfg("EVA02-B-16")
    assert _max_parity_error(reference, cfg, tmp_path, depth=2) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-16", "EVA02-B-16"])
def test_parity_full_size(tmp_path, arch):
    reference = _perturb(open_clip.create_model(arch))
    cfg = single_cfg(arch, EMBED_DIM=0, DEPTH=0, NUM_HEADS=0)
    assert _max_parity_error(reference, cfg, tmp_path, depth=12) < TOLERANCE
