"""CLIPViTBackbone on tiny trunks of every family: shapes, strides, sizes, patch 14, errors,
freezing, layer ids, drop path, gradient checkpointing, the Rein hook."""
import logging

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from open_clip.transformer import QuickGELU, VisionTransformer
from timm.layers import DropPath, resample_abs_pos_embed
from torch import nn

from vlt_common.modeling.backbone import (
    AdapterParameters,
    CLIPViTBackbone,
    ReinTokenSource,
    VLTBackbone,
    build_trunk,
    default_out_indices,
    get_trunk_adapter,
)

from .tiny_backbone import single_cfg, tiny_cfg

# One architecture per family, plus the patch-14 ones.
ARCHS = [
    "ViT-B-16",
    "ViT-L-14",
    "EVA02-B-16",
    "EVA02-L-14",
    "timm:vit_large_patch14_dinov2",
    "timm:samvit_base_patch16",
    "timm:vit_large_patch16_224.mae",
    "timm:vit_base_patch16_224.augreg_in21k_ft_in1k",
]
PATCH14 = ["ViT-L-14", "EVA02-L-14", "timm:vit_large_patch14_dinov2"]
# DINOv2 interpolates its position embeddings its own way (test_dinov2_pos_embed_*); a timm ViT
# with register tokens and no class token stands in for its token layout here.
TIMM_FAMILIES = [
    "EVA02-B-16",
    "timm:vit_base_patch16_reg4_gap_256",
    "timm:samvit_base_patch16",
    "timm:vit_large_patch16_224.mae",
]
MULTISCALE = ["res2", "res3", "res4", "res5"]


@pytest.mark.parametrize("arch", ARCHS)
def test_output_names_shapes_strides(arch):
    multi = CLIPViTBackbone(tiny_cfg(arch))
    single = CLIPViTBackbone(single_cfg(arch))
    assert (multi.patch_size, multi.embed_dim, multi.num_layers) == (16, 64, 2)
    assert {k: (v.channels, v.stride) for k, v in multi.output_shape().items()} == {
        "res2": (64, 4),
        "res3": (64, 8),
        "res4": (64, 16),
        "res5": (64, 32),
    }
    assert single.output_shape() == {"last_feat": ShapeSpec(channels=64, stride=16)}
    assert multi.size_divisibility == 32 and single.size_divisibility == 16
    assert multi.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    assert single.padding_constraints == {"size_divisibility": 16, "square_size": 0}
    for height, width in [(64, 96), (96, 64)]:
        x = torch.randn(2, 3, height, width)
        out = multi(x)
        assert list(out) == MULTISCALE
        for name, spec in multi.output_shape().items():
            assert out[name].shape == (2, 64, height // spec.stride, width // spec.stride)
            assert torch.isfinite(out[name]).all()
        assert single(x)["last_feat"].shape == (2, 64, height // 16, width // 16)


def test_subset_of_features_builds_only_their_neck():
    backbone = CLIPViTBackbone(tiny_cfg(OUT_FEATURES=["res5", "res3"]))
    assert list(backbone(torch.randn(1, 3, 64, 64))) == ["res3", "res5"]
    assert set(backbone.neck.levels) == {"res3", "res5"}


@pytest.mark.parametrize("arch", PATCH14)
def test_patch14_resampled_to_16_keeps_pretraining_grid(arch):
    backbone = CLIPViTBackbone(tiny_cfg(arch, PATCH_SIZE=16))
    trunk = backbone.trunk
    if isinstance(trunk, VisionTransformer):
        kernel = trunk.conv1.weight
    else:
        kernel = trunk.patch_embed.proj.weight
    assert kernel.shape[-2:] == (16, 16)
    # The position embeddings keep the checkpoint's grid (224 / 14 = 16, DINOv2: 518 / 14 = 37).
    expected_grid = (37, 37) if "dinov2" in arch else (16, 16)
    assert backbone._adapter.grid_size(trunk) == expected_grid


@pytest.mark.parametrize("arch", PATCH14)
def test_patch14_native_reports_true_strides(arch):
    multi = CLIPViTBackbone(tiny_cfg(arch, PATCH_SIZE=0))
    single = CLIPViTBackbone(single_cfg(arch, PATCH_SIZE=0))
    assert multi.patch_size == 14
    strides = {k: v.stride for k, v in multi.output_shape().items()}
    assert strides == {"res2": 3.5, "res3": 7, "res4": 14, "res5": 28}
    assert multi.size_divisibility == 28 and single.size_divisibility == 14
    out = multi(torch.randn(1, 3, 56, 84))  # a 4 x 6 grid of 14-pixel patches
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert single(torch.randn(1, 3, 56, 84))["last_feat"].shape == (1, 64, 4, 6)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        multi(torch.randn(1, 3, 64, 96))


@torch.no_grad()
def test_openclip_pos_embed_interpolation_matches_native_grid():
    """Our forward at 64x96 equals open_clip's own tower built for a 4x6 grid whose position
    embeddings are the bicubic resampling of ours."""
    backbone = CLIPViTBackbone(single_cfg("ViT-B-16")).eval()
    trunk = backbone.trunk
    reference = VisionTransformer(
        image_size=(64, 96), patch_size=16, width=64, layers=2, heads=2, mlp_ratio=4.0
    ).eval()
    state = {k: v for k, v in trunk.state_dict().items()}
    state["positional_embedding"] = resample_abs_pos_embed(
        trunk.positional_embedding[None], new_size=(4, 6), old_size=(14, 14), num_prefix_tokens=1
    )[0]
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert set(missing) == {"ln_post.weight", "ln_post.bias", "proj"} and not unexpected
    x = torch.randn(2, 3, 64, 96)
    expected = reference.forward_intermediates(x, indices=1, intermediates_only=True)
    assert torch.allclose(
        backbone(x)["last_feat"], expected["image_intermediates"][0], atol=1e-5, rtol=0
    )
    # A grid different from the stored one really is interpolated, not cropped or ignored.
    assert not torch.allclose(state["positional_embedding"][1:25], trunk.positional_embedding[1:25])


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
@torch.no_grad()
def test_timm_dynamic_size_matches_timm_forward(arch):
    """Position embeddings (and EVA's RoPE, SAM's relative positions) follow the input size the
    way timm's own dynamic-size forward does, square or not."""
    backbone = CLIPViTBackbone(single_cfg(arch)).eval()
    for size in [(64, 96), (96, 64), (224, 224)]:
        x = torch.randn(1, 3, *size)
        expected = backbone.trunk.forward_intermediates(x, indices=1, intermediates_only=True)[0]
        assert torch.allclose(backbone(x)["last_feat"], expected, atol=1e-5, rtol=0)


def _dinov2_reference(pos_embed, old, new):
    """DINOv2's interpolate_pos_encoding, re-derived: the patch grid scaled by (n + 0.1) / N per
    axis, bicubic, no antialias; the class entry unchanged."""
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    scale = ((new[0] + 0.1) / old, (new[1] + 0.1) / old)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)], dim=1)


@pytest.mark.parametrize("size", [(224, 224), (64, 96)])
@torch.no_grad()
def test_dinov2_pos_embed_interpolation_follows_dinov2(size):
    """Away from the stored 37 x 37 grid (518 px at patch 14), DINOv2 trunks interpolate their
    position embeddings as DINOv2 does, not with timm's antialiased resize."""
    backbone = CLIPViTBackbone(single_cfg("timm:vit_large_patch14_dinov2")).eval()
    trunk, adapter = backbone.trunk, get_trunk_adapter(backbone.trunk)
    x = torch.randn(1, 3, *size)
    grid = (size[0] // 16, size[1] // 16)
    tokens, _ = adapter.embed(trunk, x)
    patches = trunk.patch_embed(x).reshape(1, -1, 64)
    with_cls = torch.cat([trunk.cls_token, patches], dim=1)
    expected = with_cls + _dinov2_reference(trunk.pos_embed, 37, grid)
    assert torch.allclose(tokens, expected, atol=1e-6, rtol=0)
    timm_way = with_cls + resample_abs_pos_embed(trunk.pos_embed, list(grid), old_size=[37, 37])
    assert (tokens - timm_way).abs().max() > 1e-2


def test_sam_layer_norms_use_eps_1e6():
    """SAM's image encoder normalizes with LayerNorm(eps=1e-6), not timm's default 1e-5."""
    backbone = CLIPViTBackbone(tiny_cfg("timm:samvit_base_patch16"))
    norms = [m for m in backbone.trunk.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2  # norm1 and norm2 of both blocks (the neck is removed)
    assert all(m.eps == 1e-6 for m in norms)


def test_backbone_contract():
    """The solver, hooks and VLTSeg see the contract's members on CLIPViTBackbone."""
    backbone = CLIPViTBackbone(tiny_cfg())
    assert isinstance(backbone, VLTBackbone)
    assert not isinstance(nn.Linear(2, 2), VLTBackbone)
    # The optional parts: Rein's tokens for query linking and the adapters' names for the solver.
    assert isinstance(backbone, ReinTokenSource) and isinstance(backbone, AdapterParameters)
    assert backbone.layer_tokens() is None and backbone.adapter_parameter_names() == set()


def test_input_size_errors():
    backbone = CLIPViTBackbone(tiny_cfg())
    with pytest.raises(ValueError, match=r"64x95 is not a multiple of the patch size 16"):
        backbone(torch.randn(1, 3, 64, 95))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.randn(3, 64, 64))


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"FINETUNE": "lora"}, r"FINETUNE must be one of \('full', 'frozen', 'rein'"),
        ({"OUTPUT": "pyramid"}, "OUTPUT must be one of"),
        ({"OUTPUT": "single"}, r"OUT_FEATURES to \['last_feat'\]"),
        ({"OUT_FEATURES": ["res2", "p3"]}, "OUT_FEATURES must be distinct names"),
        ({"OUT_INDICES": [0, 1, 2]}, "OUT_INDICES must be 4 non-decreasing"),
        ({"OUT_INDICES": [0, 1, 1, 2]}, r"indices in \[0, 2\)"),
        ({"FREEZE_BLOCKS": 3}, "FREEZE_BLOCKS must be -1"),
        ({"ARCH": "ViT-X-99"}, "ARCH 'ViT-X-99' is neither an open_clip model"),
        ({"EMBED_DIM": 64, "NUM_HEADS": 3}, "EMBED_DIM 64 cannot be split into 3"),
    ],
)
def test_config_errors_name_the_key(keys, message):
    with pytest.raises(ValueError, match=message):
        CLIPViTBackbone(tiny_cfg(**keys))


def test_registered_builder_and_input_channels():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_clip_vit_backbone"
    backbone = build_backbone(cfg)
    assert isinstance(backbone, CLIPViTBackbone)
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0] * 4, [1.0] * 4
    with pytest.raises(ValueError, match="MODEL.PIXEL_MEAN has 4 channels"):
        build_backbone(cfg)


def test_default_out_indices():
    assert default_out_indices(12) == [3, 5, 7, 11]
    assert default_out_indices(24) == [9, 14, 19, 23]
    assert default_out_indices(2) == [0, 0, 0, 1]
    assert default_out_indices(32) == [7, 15, 23, 31]


def _grads_after_backward(backbone, size=(64, 96)):
    backbone.train()
    out = backbone(torch.randn(2, 3, *size))
    sum(v.square().mean() for v in out.values()).backward()
    return {n for n, p in backbone.named_parameters() if p.grad is not None and p.grad.abs().sum()}


def _trunk_names(backbone, layers):
    return {
        "trunk." + n
        for n, _ in backbone.trunk.named_parameters()
        if backbone._adapter.layer_id(n, backbone.num_layers) in layers
    }


@pytest.mark.parametrize("arch", ["ViT-B-16", "EVA02-B-16", "timm:samvit_base_patch16"])
@pytest.mark.parametrize("freeze_blocks", [0, 1, -1])
def test_freeze_blocks_grads_reach_exactly_the_trainable(arch, freeze_blocks):
    backbone = CLIPViTBackbone(tiny_cfg(arch, FREEZE_BLOCKS=freeze_blocks))
    neck = {"neck." + n for n, _ in backbone.neck.named_parameters()}
    trainable_layers = {0: {0, 1, 2}, 1: {2}, -1: set()}[freeze_blocks]
    expected = neck | _trunk_names(backbone, trainable_layers)
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == expected
    assert _grads_after_backward(backbone) == expected


class _StandInRein(nn.Module):
    """The Rein interface: adds a learnable per-layer offset to the patch tokens only."""

    def __init__(self, num_layers, embed_dim):
        super().__init__()
        self.offset = nn.Parameter(torch.full((num_layers, embed_dim), 0.5))
        self.calls = []

    def forward(self, tokens, layer, num_prefix_tokens):
        self.calls.append((layer, num_prefix_tokens, tuple(tokens.shape)))
        prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
        return torch.cat([prefix, patches + self.offset[layer]], dim=1)

    def layer_tokens(self):
        return self.offset[:, None]


@pytest.mark.parametrize("arch, prefix", [("ViT-B-16", 1), ("timm:samvit_base_patch16", 0)])
def test_rein_hook_after_every_block(arch, prefix):
    trunk = build_trunk(arch, embed_dim=64, depth=2, num_heads=2)
    rein = _StandInRein(2, 64)
    backbone = CLIPViTBackbone(
        trunk=trunk, output="single", out_features=["last_feat"], freeze_blocks=-1, rein=rein
    )
    x = torch.randn(2, 3, 64, 96)
    out = backbone(x)["last_feat"]
    assert rein.calls == [(0, prefix, (2, prefix + 24, 64)), (1, prefix, (2, prefix + 24, 64))]
    with torch.no_grad():
        rein.offset.zero_()
        plain = backbone(x)["last_feat"]
    assert not torch.allclose(out, plain)
    rein.offset.data.fill_(0.5)
    assert _grads_after_backward(backbone) == {"rein.offset"}


def test_finetune_modes():
    frozen = CLIPViTBackbone(tiny_cfg(FINETUNE="frozen", FREEZE_BLOCKS=0))
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    assert all(p.requires_grad for p in frozen.neck.parameters()) and frozen.rein is None
    warmup = CLIPViTBackbone(tiny_cfg(FINETUNE="frozen_warmup", FREEZE_BLOCKS=1))
    full = CLIPViTBackbone(tiny_cfg(FREEZE_BLOCKS=1))
    trainable = {n for n, p in warmup.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in full.named_parameters() if p.requires_grad}
    warmup.set_trunk_trainable(False)
    assert not any(p.requires_grad for p in warmup.trunk.parameters())
    warmup.set_trunk_trainable(True)
    assert {n for n, p in warmup.named_parameters() if p.requires_grad} == trainable


def test_finetune_rein_builds_rein_and_freezes_trunk():
    backbone = CLIPViTBackbone(tiny_cfg("EVA02-B-16", FINETUNE="rein", FREEZE_BLOCKS=0))
    assert backbone.rein is not None
    assert backbone.rein.layer_tokens().shape == (2, 100, 64)
    rein = {"rein." + n for n, _ in backbone.rein.named_parameters()}
    neck = {"neck." + n for n, _ in backbone.neck.named_parameters()}
    assert _grads_after_backward(backbone) == rein | neck


def test_layer_ids_follow_vitdet_semantics():
    decay = 0.7
    backbone = CLIPViTBackbone(tiny_cfg("timm:vit_base_patch16_224.augreg_in21k_ft_in1k"))
    names = [n for n, _ in backbone.named_parameters()]
    assert "trunk.blocks.1.attn.qkv.weight" in names and "trunk.cls_token" in names
    for name in names:
        layer = backbone.layer_id(name)
        if name == "trunk.cls_token":
            # Detectron2's ViT has no class token; the brief puts every embedding at 0.
            assert layer == 0
            continue
        expected = get_vit_lr_decay_rate("backbone." + name, decay, backbone.num_layers)
        assert decay ** (backbone.num_layers + 1 - layer) == pytest.approx(expected), name

    openclip = CLIPViTBackbone(tiny_cfg("ViT-B-16"))
    expected = {"conv1": 0, "class_embedding": 0, "positional_embedding": 0, "ln_pre": 0}
    for name, _ in openclip.named_parameters():
        parts = name.split(".")
        if name.startswith("trunk.transformer.resblocks."):
            assert openclip.layer_id(name) == int(parts[3]) + 1
        elif name.startswith("trunk."):
            assert openclip.layer_id(name) == expected[parts[1]], name
        else:
            assert openclip.layer_id(name) == 3, name


@pytest.mark.parametrize("arch", ["ViT-B-16", "EVA02-B-16"])
def test_drop_path_and_grad_checkpoint(arch):
    torch.manual_seed(1)
    regular = CLIPViTBackbone(tiny_cfg(arch))
    dropped = CLIPViTBackbone(tiny_cfg(arch, DROP_PATH_RATE=0.5, GRAD_CHECKPOINT=True))
    dropped.load_state_dict(regular.state_dict())
    assert any(isinstance(m, DropPath) and m.drop_prob == 0.5 for m in dropped.modules())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        # Eval mode: no stochastic depth, no checkpointing, same function.
        expected, actual = regular.eval()(x), dropped.eval()(x)
        for name in MULTISCALE:
            assert torch.equal(expected[name], actual[name])
        # Training: rates rise linearly from 0 (block 0, feeding res2..res4) to 0.5 (block 1).
        expected, actual = regular.train()(x), dropped.train()(x)
        assert torch.allclose(expected["res4"], actual["res4"], atol=1e-6)
        assert (expected["res5"] - actual["res5"]).abs().max() > 1e-2
    # Checkpointing alone changes neither the outputs nor the gradients in training.
    checkpointed = CLIPViTBackbone(tiny_cfg(arch, GRAD_CHECKPOINT=True))
    checkpointed.load_state_dict(regular.state_dict())
    grads = []
    for model in (regular, checkpointed):
        model.train().zero_grad()
        out = model(x)
        sum(v.square().mean() for v in out.values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_openclip_quickgelu_arch_and_unused_blocks_frozen():
    backbone = CLIPViTBackbone(tiny_cfg("ViT-B-16-quickgelu", DEPTH=4, OUT_INDICES=[0, 1, 1, 2]))
    assert any(isinstance(m, QuickGELU) for m in backbone.trunk.modules())
    # Block 3 feeds no output: it is skipped and frozen, so it never waits for a gradient.
    assert not any(p.requires_grad for p in backbone.trunk.transformer.resblocks[3].parameters())
    assert _grads_after_backward(backbone) == {
        n for n, p in backbone.named_parameters() if p.requires_grad
    }


def test_openclip_tower_built_without_random_init_warning(caplog):
    """open_clip's create_model builds the tower; its "initialized randomly" warning would
    mislead (the weights load afterwards), so it is dropped, and the text tower is not kept."""
    with caplog.at_level(logging.WARNING):
        trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2)
    assert isinstance(trunk, VisionTransformer)
    assert "initialized randomly" not in caplog.text
    logging.getLogger().warning("No pretrained weights loaded (outside the build)")
    assert "outside the build" in caplog.text  # the filter does not outlive the build
