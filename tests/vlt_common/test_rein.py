"""Rein: the equations on a hand-computed case, prefix tokens, initialization, gradients, size;
inside the backbone: the official interpolation neck, the eval-mode frozen trunk, the tokens and
the adapters' learning rate."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn
from torch.nn import functional as F

from vlt_common.config import add_vlt_common_config
from vlt_common.modeling.backbone import CLIPViTBackbone, MultiScaleNeck
from vlt_common.modeling.backbone.rein import Rein
from vlt_common.solver import get_param_groups


def _set_small_case(rein):
    # c = 2, m = 3, r = 1, one layer: T = A B = [[1, 0], [0, 0], [2, 0]]
    with torch.no_grad():
        rein.tokens_a.copy_(torch.tensor([[[1.0], [0.0], [2.0]]]))
        rein.tokens_b.copy_(torch.tensor([[[1.0, 0.0]]]))
        rein.token_proj.weight.copy_(torch.eye(2))  # W_T = I
        rein.token_proj.bias.copy_(torch.tensor([0.0, 1.0]))
        rein.feat_proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # W_f = diag(2, 1)
        rein.feat_proj.bias.copy_(torch.tensor([1.0, 0.0]))
        rein.scale.fill_(0.5)


def test_matches_hand_computed_equations():
    rein = Rein(num_layers=1, embed_dim=2, num_tokens=3, rank=1)
    _set_small_case(rein)
    tokens = torch.tensor([[[9.0, -9.0], [1.0, 1.0]]])  # [cls, one patch f = (1, 1)]
    out = rein(tokens, layer=0, num_prefix_tokens=1)

    # S = softmax(f T^T / sqrt(2)) = softmax([1, 0, 2] / sqrt(2)) over the 3 tokens
    logits = [1 / math.sqrt(2), 0.0, 2 / math.sqrt(2)]
    z = sum(math.exp(v) for v in logits)
    s1, s2 = math.exp(logits[1]) / z, math.exp(logits[2]) / z
    # T[1:] W_T + b_T = [[0, 1], [2, 1]];  Δf̄ = s1 (0, 1) + s2 (2, 1) = (2 s2, s1 + s2)
    # Δf = (Δf̄ + f) W_f + b_f = (2 (2 s2 + 1) + 1, s1 + s2 + 1);  out = f + 0.5 Δf
    expected = torch.tensor(
        [[[9.0, -9.0], [1 + 0.5 * (4 * s2 + 3), 1 + 0.5 * (s1 + s2 + 1)]]]
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_first_learnable_token_is_normalized_over_but_not_aggregated():
    rein = Rein(num_layers=1, embed_dim=2, num_tokens=3, rank=1)
    _set_small_case(rein)
    feats = torch.tensor([[[1.0, 1.0]]])
    base = rein(feats, layer=0, num_prefix_tokens=0)
    # Moving T[0] changes the softmax denominator, so the output changes...
    with torch.no_grad():
        rein.tokens_a[0, 0, 0] = 5.0
    moved = rein(feats, layer=0, num_prefix_tokens=0)
    assert not torch.allclose(base, moved)
    # ...and when T[0] takes all the similarity mass, only f W_f + b_f is left.
    with torch.no_grad():
        rein.tokens_a[0, 0, 0] = 1e4
    sink = rein(feats, layer=0, num_prefix_tokens=0)
    torch.testing.assert_close(sink, torch.tensor([[[1 + 0.5 * 3, 1 + 0.5 * 1]]]))


def test_prefix_untouched_and_near_identity_at_init():
    rein = Rein(num_layers=3, embed_dim=16, num_tokens=8, rank=4)
    tokens = torch.randn(2, 1 + 4 + 12, 16)
    out = rein(tokens, layer=2, num_prefix_tokens=5)
    assert out.shape == tokens.shape
    assert torch.equal(out[:, :5], tokens[:, :5])
    change = (out[:, 5:] - tokens[:, 5:]).abs().max()
    # scale_init = 1e-3: the refinement is about a thousandth of the features
    assert 0 < change < 1e-2 * tokens.abs().max()
    with torch.no_grad():
        rein.scale.zero_()
    assert torch.equal(rein(tokens, layer=2, num_prefix_tokens=5), tokens)


def test_token_init_bound_and_scale():
    rein = Rein(num_layers=2, embed_dim=64, num_tokens=10, rank=4)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + math.sqrt(64 * 4)))
    for p in (rein.tokens_a, rein.tokens_b):
        assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound
    assert rein.scale.item() == pytest.approx(1e-3)


def test_gradients_reach_every_parameter():
    rein = Rein(num_layers=2, embed_dim=8, num_tokens=5, rank=2)
    tokens = torch.randn(2, 7, 8, requires_grad=True)
    out = rein(tokens, layer=1, num_prefix_tokens=1)
    (out**2).sum().backward()
    for name, p in rein.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # only layer 1's tokens were used
    assert rein.tokens_a.grad[0].abs().sum() == 0
    assert rein.tokens_a.grad[1].abs().sum() > 0
    # the prefix token reaches the output unchanged: its gradient is exactly 2 * token
    torch.testing.assert_close(tokens.grad[:, 0], 2 * tokens[:, 0].detach())


def test_layer_tokens():
    rein = Rein(num_layers=3, embed_dim=6, num_tokens=4, rank=2)
    tokens = rein.layer_tokens()
    assert tokens.shape == (3, 4, 6)
    for i in range(3):
        torch.testing.assert_close(tokens[i], rein.tokens_a[i] @ rein.tokens_b[i])


def test_parameter_count_vit_large():
    rein = Rein(num_layers=24, embed_dim=1024)
    count = sum(p.numel() for p in rein.parameters())
    assert count == Rein.num_parameters_formula(24, 1024, 100, 16)
    # 24*100*16 + 24*16*1024 + 2*(1024^2 + 1024) + 1
    assert count == 2_530_817
    # The paper's 2.99M for ViT-L also counts the query-linking layers (in vltseg):
    # W_Q [1024 -> 256] and W'_Q [3*256 -> 256], with biases.
    linking = (1024 * 256 + 256) + (3 * 256 * 256 + 256)
    assert round((count + linking) / 1e6, 2) == 2.99


def test_no_weight_decay_names_exist():
    rein = Rein(num_layers=1, embed_dim=4, num_tokens=2, rank=1)
    names = dict(rein.named_parameters())
    assert rein.no_weight_decay() <= set(names)


@pytest.mark.parametrize(
    "shape,layer,prefix",
    [((1, 4, 5), 0, 1), ((1, 4, 8), 2, 1), ((1, 4, 8), 0, 4), ((4, 8), 0, 0)],
)
def test_bad_input(shape, layer, prefix):
    rein = Rein(num_layers=2, embed_dim=8, num_tokens=3, rank=2)
    with pytest.raises((ValueError, IndexError)):
        rein(torch.zeros(shape), layer=layer, num_prefix_tokens=prefix)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        Rein(num_layers=2, embed_dim=8, num_tokens=1)
    with pytest.raises(ValueError, match="embed_dim"):
        Rein(num_layers=2, embed_dim=0)


# ---------------------------------------------------------------------------------------------
# Rein inside CLIPViTBackbone: official neck, eval-mode trunk, tokens and adapter learning rates
# ---------------------------------------------------------------------------------------------
def _backbone(finetune="rein", neck="interpolate", **keys):
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    bcfg = cfg.MODEL.VLT_BACKBONE
    bcfg.ARCH, bcfg.EMBED_DIM, bcfg.DEPTH, bcfg.NUM_HEADS = "ViT-B-16", 64, 2, 2
    bcfg.FINETUNE, bcfg.NECK = finetune, neck
    for key, value in keys.items():
        setattr(bcfg, key, value)
    return CLIPViTBackbone(cfg)


def _trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_interpolate_neck_matches_bilinear_resizing():
    scales = {"res2": 4.0, "res3": 2.0, "res4": 1.0, "res5": 0.5}
    neck = MultiScaleNeck(channels=3, scales=scales, mode="interpolate")
    assert list(neck.parameters()) == []
    maps = {name: torch.randn(2, 3, 6, 10) for name in scales}
    out = neck(maps)
    for name, s in scales.items():
        if s == 1.0:
            assert out[name] is maps[name]
            continue
        expected = F.interpolate(maps[name], scale_factor=s, mode="bilinear", align_corners=False)
        assert out[name].shape[-2:] == (int(6 * s), int(10 * s))
        torch.testing.assert_close(out[name], expected, rtol=0, atol=0)
    # hand-computed x0.5 with align_corners=False: the mean of each 2x2 block
    x = torch.arange(16.0).view(1, 1, 4, 4)
    half = neck.levels["res5"](x)
    torch.testing.assert_close(half, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_learnable_neck_is_the_12_6m_that_interpolation_drops():
    scales = {"res2": 4.0, "res3": 2.0, "res4": 1.0, "res5": 0.5}
    learnable = MultiScaleNeck(channels=1024, scales=scales)
    # three 2x2 transposed convolutions (1024 -> 1024, with bias) and one LayerNorm
    assert _trainable(learnable) == 3 * (1024 * 1024 * 4 + 1024) + 2 * 1024 == 12_588_032
    with pytest.raises(ValueError, match="MODEL.VLT_BACKBONE.NECK"):
        MultiScaleNeck(channels=4, scales=scales, mode="bicubic")


def test_trainable_parameters_of_rein_and_frozen_modes_with_the_official_neck():
    rein = _backbone("rein")
    assert _trainable(rein) == Rein.num_parameters_formula(2, 64, 100, 16)
    assert _trainable(_backbone("frozen")) == 0
    with_neck = _backbone("rein", neck="learnable")
    assert _trainable(with_neck) == _trainable(rein) + _trainable(with_neck.neck) > _trainable(rein)
    # the maps are the interpolated patch-stride maps
    x = torch.randn(1, 3, 64, 96)
    out = rein(x)
    res4 = out["res4"]
    assert res4.shape == (1, 64, 4, 6)
    assert out["res2"].shape == (1, 64, 16, 24) and out["res5"].shape == (1, 64, 2, 3)


def test_default_neck_is_vltseg_learnable():
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    assert cfg.MODEL.VLT_BACKBONE.NECK == "learnable"


@pytest.mark.parametrize("finetune", ["rein", "frozen"])
def test_frozen_trunk_stays_in_eval_mode(finetune):
    backbone = _backbone(finetune, DROP_PATH_RATE=0.5)
    wrapper = nn.Sequential(backbone)
    for mode in (True, False, True):
        wrapper.train(mode)
        assert backbone.training is mode
        assert not any(m.training for m in backbone.trunk.modules())
        if backbone.rein is not None:
            assert backbone.rein.training is mode
    # drop path (0.5 in block 1, which feeds res5) is off: two training passes agree
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(backbone(x)["res5"], backbone(x)["res5"], rtol=0, atol=0)


def test_trainable_trunk_follows_train_mode():
    full = _backbone("full", DROP_PATH_RATE=0.5)
    warmup = _backbone("frozen_warmup")
    for backbone in (full, warmup):
        backbone.train()
        assert all(m.training for m in backbone.trunk.modules())
        backbone.eval()
        assert not any(m.training for m in backbone.trunk.modules())
    full.train()
    x = torch.randn(8, 3, 32, 32)
    assert not torch.equal(full(x)["res5"], full(x)["res5"])


def test_backbone_layer_tokens_and_adapter_names():
    rein = _backbone("rein")
    torch.testing.assert_close(rein.layer_tokens(), rein.rein.layer_tokens())
    assert rein.layer_tokens().requires_grad
    names = {n for n, _ in rein.named_parameters() if n.startswith("rein.")}
    assert rein.adapter_parameter_names() == names and len(names) == 7
    frozen = _backbone("frozen")
    assert frozen.layer_tokens() is None and frozen.adapter_parameter_names() == set()


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_rein_trains_at_the_head_lr(layer_decay):
    model = nn.Module()
    model.backbone = _backbone("rein", neck="learnable")
    model.head = nn.Linear(4, 4)
    groups = get_param_groups(
        model,
        base_lr=1.0,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        weight_decay_bias=None,
        weight_decay_embed=0.0,
        backbone_multiplier=0.1,
        layer_decay=layer_decay,
    )
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    neck_lr = 0.1 if layer_decay == 1.0 else 1.0  # layer id num_layers + 1: full lr
    for name, param in named.items():
        if name.startswith("backbone.trunk."):
            assert id(param) not in lr, name  # frozen
        elif name.startswith("backbone.rein.") or name.startswith("head."):
            assert lr[id(param)] == 1.0, name
        else:
            assert name.startswith("backbone.neck.") and lr[id(param)] == neck_lr, name
    assert sum(name.startswith("backbone.rein.") for name in named) == 7
