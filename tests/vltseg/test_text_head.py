"""DenseCLIP's pixel-text matching head (vltseg.modeling.text_head) against the official
behaviour: CLIP's own image projection, refinement on the raw text embeddings, the context
decoder's attention and initialization, the always-on score-map concatenation, the loss
reduction and the weight decay of the context vectors and gamma."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from open_clip import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from tests.paths import CONFIGS
from vlt_common.engine.defaults import get_vlt_cfg
from vlt_common.modeling.backbone import CLIPViTBackbone
from vlt_common.modeling.backbone.trunk_builder import build_trunk
from vlt_common.modeling.text_encoder import CLIPTextEncoder
from vlt_common.solver import get_param_groups
from vltseg.modeling.text_head import ContextDecoder, DenseCLIPTextHead

CLASSES = ["road", "car", "sky"]
IGNORE = 255
CLIP_DIM = 512  # ViT-B-16's image-text embedding width


@pytest.fixture(scope="module")
def text_encoder():
    return CLIPTextEncoder("ViT-B-16", width=64, layers=1, heads=2, embed_dim=32)


def _head(text_encoder, **kwargs):
    params = dict(
        text_encoder=text_encoder,
        class_names=CLASSES,
        refine_width=32,
        refine_heads=2,
        refine_layers=2,
    )
    params.update(kwargs)
    return DenseCLIPTextHead(**params)


def _visual(batch=2, dim=32):
    """CLIP embeddings as the backbone gives them: global [B, D], pixels [B, D, h, w]."""
    return torch.randn(batch, dim), torch.randn(batch, dim, 4, 6)


def _backbone_cfg(**keys):
    cfg = get_vlt_cfg()
    cfg.MODEL.VLT_BACKBONE.ARCH = "ViT-B-16"
    cfg.MODEL.VLT_BACKBONE.EMBED_DIM = 64
    cfg.MODEL.VLT_BACKBONE.DEPTH = 2
    cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 2
    for key, value in keys.items():
        setattr(cfg.MODEL.VLT_BACKBONE, key, value)
    return cfg


# ------------------------------------------------------------------------------------------------
# 1. Visual embeddings: CLIP's own ln_post + proj from the backbone's checkpoint
# ------------------------------------------------------------------------------------------------
def _tiny_open_clip():
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=CLIP_DIM,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=224),
        text_cfg=CLIPTextCfg(width=64, heads=2, layers=1),
    )
    with torch.no_grad():  # ln_post is 1 / 0 at init: make the test see it
        model.visual.ln_post.weight.normal_(1.0, 0.5)
        model.visual.ln_post.bias.normal_(0.0, 0.5)
    return model.eval()


def test_pixel_embeddings_are_open_clips_own_projection(tmp_path, text_encoder):
    model = _tiny_open_clip()
    path = tmp_path / "open_clip_tiny.bin"
    torch.save(model.state_dict(), path)
    backbone = CLIPViTBackbone(_backbone_cfg(PRETRAINED=str(path), CLIP_HEAD=True)).eval()
    # loaded from the same checkpoint as the blocks, and trainable
    assert torch.equal(backbone.trunk.proj, model.visual.proj)
    assert torch.equal(backbone.trunk.ln_post.weight, model.visual.ln_post.weight)
    assert backbone.trunk.proj.requires_grad and backbone.trunk.ln_post.weight.requires_grad

    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        backbone(images)
        pooled, pixels = backbone.clip_embeddings()
        model.visual.output_tokens = True
        ref_pooled, ref_tokens = model.visual(images)  # tokens: ln_post of the final block
    ref_pixels = (ref_tokens @ model.visual.proj).transpose(1, 2).reshape(1, CLIP_DIM, 14, 14)
    assert pixels.shape == (1, CLIP_DIM, 14, 14)  # stride 16
    torch.testing.assert_close(pixels, ref_pixels, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="after one"):
        backbone.clip_embeddings()  # each forward's tokens are read once

    # the head matches those very embeddings with the text
    head = _head(CLIPTextEncoder("ViT-B-16", width=64, layers=1, heads=2)).eval()
    with torch.no_grad():
        score = head(pooled, pixels)
        text = F.normalize(head.text_embeddings(ref_pooled, ref_pixels), dim=-1)
    expected = torch.einsum("bdhw,bkd->bkhw", F.normalize(ref_pixels, dim=1), text)
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-5)


def test_eva_clip_projection_is_timms_head(tmp_path):
    # EVA02-CLIP (a timm Eva in open_clip): norm + head hold the projection; an open_clip file
    # stores them under visual.trunk.
    source = build_trunk("EVA02-B-16", embed_dim=64, depth=2, num_heads=2, clip_head=True)
    with torch.no_grad():
        for param in source.parameters():
            param.normal_(0, 0.1)
    path = tmp_path / "eva_tiny.bin"
    torch.save({f"visual.trunk.{k}": v for k, v in source.state_dict().items()}, path)
    cfg = _backbone_cfg(ARCH="EVA02-B-16", PRETRAINED=str(path), CLIP_HEAD=True)
    backbone = CLIPViTBackbone(cfg).eval()
    assert backbone.trunk.head.out_features == 512
    assert torch.equal(backbone.trunk.head.weight, source.head.weight)
    assert torch.equal(backbone.trunk.norm.weight, source.norm.weight)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        backbone(images)
        pooled, pixels = backbone.clip_embeddings()
        features = source.eval().forward_features(images)  # final norm included
        reference = source.head(features)
    torch.testing.assert_close(pooled, source.forward_head(features), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pixels.flatten(2).transpose(1, 2), reference[:, 1:])


def test_no_clip_projection_without_the_text_head():
    backbone = CLIPViTBackbone(_backbone_cfg())
    names = {n for n, _ in backbone.named_parameters()}
    assert not any(n.startswith(("trunk.proj", "trunk.ln_post")) for n in names)
    with pytest.raises(RuntimeError, match="CLIP_HEAD"):
        backbone.clip_embeddings()
    with_head = {n for n, _ in CLIPViTBackbone(_backbone_cfg(CLIP_HEAD=True)).named_parameters()}
    assert with_head - names == {"trunk.proj", "trunk.ln_post.weight", "trunk.ln_post.bias"}
    with pytest.raises(ValueError, match="timm model"):
        CLIPViTBackbone(_backbone_cfg(ARCH="timm:vit_base_patch16_224", CLIP_HEAD=True))


def test_from_config_needs_the_clip_projection():
    cfg = get_vlt_cfg()
    # VLTSeg's Detectron2 keys (SEM_SEG_HEAD.IN_FEATURES res2..res5) come with its base config
    cfg.merge_from_file(os.path.join(CONFIGS, "Base-VLTSeg.yaml"))
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_WIDTH = 64
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_LAYERS = 1
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_HEADS = 2
    with pytest.raises(ValueError, match="MODEL.VLT_BACKBONE.CLIP_HEAD"):
        DenseCLIPTextHead(cfg, CLIPViTBackbone(_backbone_cfg()), CLASSES)
    backbone = CLIPViTBackbone(_backbone_cfg(CLIP_HEAD=True))
    head = DenseCLIPTextHead(cfg, backbone, CLASSES)
    assert head.text_encoder.width == 64 and head.loss_weight == 0.4
    assert (head.concat_to, head.avg_non_ignore, head.weight_decay) == ("res4", False, 1e-4)
    cfg.MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO = "p7"
    with pytest.raises(KeyError, match="CONCAT_TO='p7'"):
        DenseCLIPTextHead(cfg, backbone, CLASSES)
    with pytest.raises(ValueError, match="same CLIP model"):
        _head(CLIPTextEncoder("ViT-B-16", width=64, layers=1, heads=2))(*_visual(dim=32))


# ------------------------------------------------------------------------------------------------
# 3. Refinement added to the raw text embeddings, normalized afterwards
# ------------------------------------------------------------------------------------------------
class _FixedText(nn.Module):
    """A text tower whose raw embeddings are fixed: t_0 = (3, 0), t_1 = (0, 4)."""

    width, embed_dim = 4, 2

    def encode_with_context(self, context, class_names):
        return torch.tensor([[3.0, 0.0], [0.0, 4.0]])


class _FixedUpdate(nn.Module):
    def forward(self, text, visual):  # decoder output r_0 = (0, 1), r_1 = (1, 0)
        return torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(text.shape[0], -1, -1)


def test_refinement_is_added_to_the_raw_text_embeddings():
    head = DenseCLIPTextHead(
        text_encoder=_FixedText(), class_names=["a", "b"], refine_width=4, refine_heads=1
    )
    head.context_decoder = _FixedUpdate()
    with torch.no_grad():
        head.gamma.fill_(1.0)
    pixels = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    score = head(torch.zeros(1, 2), pixels)
    # t' = t + r = (3, 1), (1, 4): cos with (1, 0) is 3 / sqrt(10) and 1 / sqrt(17).
    # (Normalizing first would give (1, 1) and (1, 1): 1 / sqrt(2) for both.)
    expected = torch.tensor([3 / math.sqrt(10), 1 / math.sqrt(17)]).view(1, 2, 1, 1)
    torch.testing.assert_close(score, expected)


def test_refinement_starts_near_the_plain_text_embeddings(text_encoder):
    head = _head(text_encoder)
    global_embed, pixels = _visual()
    plain = text_encoder.encode_with_context(head.contexts, CLASSES)
    refined = head.text_embeddings(global_embed, pixels)
    diff = (refined - plain.unsqueeze(0)).abs().max()
    assert 0 < diff < 1e-3 * plain.abs().max()
    with torch.no_grad():
        head.gamma.zero_()
    torch.testing.assert_close(head.text_embeddings(global_embed, pixels), plain.expand(2, -1, -1))


def test_global_token_is_part_of_the_visual_context(text_encoder):
    head = _head(text_encoder).eval()
    global_embed, pixels = _visual()
    with torch.no_grad():
        head.gamma.fill_(1.0)
        first = head.text_embeddings(global_embed, pixels)
        second = head.text_embeddings(torch.randn_like(global_embed), pixels)
    assert not torch.allclose(first, second)


# ------------------------------------------------------------------------------------------------
# 4. Context decoder: DenseCLIP's attention and initialization
# ------------------------------------------------------------------------------------------------
def test_context_decoder_attention_parameters_and_init():
    torch.manual_seed(0)
    decoder = ContextDecoder(embed_dim=512, width=256, num_heads=4, num_layers=3)
    layer = decoder.layers[0]
    for attn in (layer.self_attn, layer.cross_attn):
        assert {n: tuple(p.shape) for n, p in attn.named_parameters()} == {
            "q_proj.weight": (256, 256),
            "k_proj.weight": (256, 256),
            "v_proj.weight": (256, 256),
            "proj.weight": (256, 256),
            "proj.bias": (256,),
        }
    for name, module in decoder.named_modules():
        if isinstance(module, nn.Linear):  # every projection: trunc_normal(std=0.02), bias 0
            assert abs(module.weight.std().item() - 0.02) < 1e-3, name
            assert abs(module.weight.mean().item()) < 1e-3, name
            assert module.bias is None or not module.bias.any(), name


def test_attention_dropout_is_on_the_output_projection_only():
    decoder = ContextDecoder(embed_dim=16, width=32, num_heads=2, num_layers=1, dropout=0.5)
    attn = decoder.layers[0].cross_attn
    assert isinstance(attn.proj_drop, nn.Dropout) and attn.proj_drop.p == 0.5
    attn.train()
    query, memory = torch.randn(2, 3, 32), torch.randn(2, 10, 32)
    assert not torch.equal(attn(query, memory), attn(query, memory))  # the output dropout
    attn.proj_drop = nn.Identity()
    torch.testing.assert_close(attn(query, memory), attn(query, memory))  # none elsewhere
    # softmax(q k^T / sqrt(d)) v by hand, d = 16 per head
    q = attn.q_proj(query).view(2, 3, 2, 16).transpose(1, 2)
    k = attn.k_proj(memory).view(2, 10, 2, 16).transpose(1, 2)
    v = attn.v_proj(memory).view(2, 10, 2, 16).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 3, 32))
    torch.testing.assert_close(attn(query, memory), expected)


def test_context_decoder_attends_to_visual_tokens():
    decoder = ContextDecoder(embed_dim=16, width=32, num_heads=2, num_layers=2, dropout=0.0)
    text = torch.randn(2, 3, 16)
    out1 = decoder(text, torch.randn(2, 10, 16))
    out2 = decoder(text, torch.randn(2, 10, 16))
    assert out1.shape == (2, 3, 16)
    assert not torch.allclose(out1, out2)


# ------------------------------------------------------------------------------------------------
# 5. Score map concatenated to the stride-16 map by default
# ------------------------------------------------------------------------------------------------
def test_score_map_shape_and_range(text_encoder):
    head = _head(text_encoder)
    score = head(*_visual())
    assert score.shape == (2, 3, 4, 6)
    assert score.abs().max() <= 1.0 + 1e-5
    assert head.contexts.shape == (8, 64)
    assert head.gamma.shape == (32,) and torch.all(head.gamma == 1e-4)


def test_score_map_is_concatenated_to_res4_by_default(text_encoder):
    head = _head(text_encoder)
    assert head.concat_to == "res4" and get_vlt_cfg().MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO == "res4"
    shapes = {"res4": ShapeSpec(channels=48, stride=16), "res5": ShapeSpec(channels=48, stride=32)}
    new_shapes = head.head_input_shape(shapes)
    assert new_shapes["res4"].channels == 48 + 3 and new_shapes["res4"].stride == 16
    assert new_shapes["res5"] == shapes["res5"] and shapes["res4"].channels == 48
    features = {"res4": torch.randn(2, 48, 4, 6), "res5": torch.randn(2, 48, 2, 3)}
    score = head(*_visual())
    out = head.concat_score_map(features, score)
    assert out["res4"].shape == (2, 51, 4, 6)
    assert torch.equal(out["res4"][:, :48], features["res4"])
    assert torch.equal(out["res4"][:, 48:], score)  # same stride: no resizing
    assert features["res4"].shape[1] == 48  # the input dict is not modified
    resized = _head(text_encoder, concat_to="res5").concat_score_map(features, score)
    assert resized["res5"].shape == (2, 51, 2, 3)
    assert _head(text_encoder, concat_to="").head_input_shape(shapes) == shapes


# ------------------------------------------------------------------------------------------------
# 6. Loss reduction
# ------------------------------------------------------------------------------------------------
def _two_class_case():
    # Four pixels: label 0 with scores (0, 0): CE = log 2; label 1 with scores (0.07 ln 3, 0):
    # logits (ln 3, 0), CE = log(1 + 3) = 2 log 2; two ignored pixels with arbitrary scores.
    score = torch.tensor([[0.0, 0.07 * math.log(3), 5.0, -5.0], [0.0, 0.0, -5.0, 5.0]])
    return score.view(1, 2, 1, 4), torch.tensor([[[0, 1, IGNORE, IGNORE]]])


def test_loss_averages_over_all_pixels_by_default(text_encoder):
    score, labels = _two_class_case()
    official = _head(text_encoder).losses(score, labels)["loss_ptm"]
    # 0.4 * (log 2 + 2 log 2) / 4 pixels (the two ignored ones count zero)
    torch.testing.assert_close(official, torch.tensor(0.4 * 3 * math.log(2) / 4))
    valid = _head(text_encoder, avg_non_ignore=True).losses(score, labels)["loss_ptm"]
    torch.testing.assert_close(valid, torch.tensor(0.4 * 3 * math.log(2) / 2))


def test_loss_ignores_255_and_upsamples(text_encoder):
    head = _head(text_encoder)
    labels = torch.randint(0, 3, (1, 16, 24))
    labels[0, :4] = IGNORE
    right = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 2 - 1
    wrong = right.roll(1, dims=1)
    loss_wrong = head.losses(wrong, labels)["loss_ptm"]
    assert head.losses(right, labels)["loss_ptm"] < 0.01 < loss_wrong
    changed = wrong.clone()
    changed[..., :4, :] = torch.randn_like(changed[..., :4, :])
    torch.testing.assert_close(head.losses(changed, labels)["loss_ptm"], loss_wrong)
    score = torch.randn(2, 3, 4, 6, requires_grad=True)
    loss = head.losses(score, torch.randint(0, 3, (2, 64, 96)))["loss_ptm"]
    loss.backward()
    assert torch.isfinite(loss) and score.grad.abs().sum() > 0


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_all_ignored_gives_zero_loss_with_graph(text_encoder, avg_non_ignore):
    head = _head(text_encoder, avg_non_ignore=avg_non_ignore)
    score = torch.randn(1, 3, 4, 6, requires_grad=True)
    loss = head.losses(score, torch.full((1, 32, 48), IGNORE))["loss_ptm"]
    assert loss.item() == 0.0
    loss.backward()


# ------------------------------------------------------------------------------------------------
# 7. Weight decay of the context vectors and gamma; gradients
# ------------------------------------------------------------------------------------------------
def test_contexts_and_gamma_get_denseclips_weight_decay(text_encoder):
    model = nn.ModuleDict({"text_head": _head(text_encoder)})
    groups = get_param_groups(
        model,
        base_lr=1e-4,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        weight_decay_bias=None,
        weight_decay_embed=0.0,
        backbone_multiplier=0.1,
        layer_decay=1.0,
    )
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    head = model["text_head"]
    assert decay[id(head.contexts)] == 1e-4 and decay[id(head.gamma)] == 1e-4
    assert decay[id(head.context_decoder.layers[0].self_attn.q_proj.weight)] == 0.05
    assert decay[id(head.context_decoder.text_proj[0].weight)] == 0.0  # a norm
    assert not any(id(p) in decay for p in head.text_encoder.parameters())  # frozen


def test_gradients_reach_the_head_not_the_text_tower(text_encoder):
    head = _head(text_encoder)
    global_embed, pixels = (x.requires_grad_() for x in _visual())
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1)  # frozen ones included on purpose
    loss = head.losses(head(global_embed, pixels), torch.randint(0, 3, (2, 32, 48)))["loss_ptm"]
    loss.backward()
    for name, param in head.named_parameters():
        if name.startswith("text_encoder."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert pixels.grad is not None and global_embed.grad is not None  # the backbone trains
    optimizer.step()
    for key, value in text_encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    head.train()
    assert not text_encoder.training
