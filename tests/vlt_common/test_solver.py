"""Solver: parameter groups (lr and weight decay per parameter), clipping, the poly schedule."""
import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from torch import nn

from vlt_common.config import add_vlt_common_config
from vlt_common.modeling.backbone.rein import Rein
from vlt_common.solver import build_lr_scheduler, build_optimizer, get_param_groups

BASE_LR = 1e-4
WD, WD_NORM, WD_BIAS, WD_EMBED = 0.05, 0.0, 0.03, 0.01


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)


class _FakeBackbone(nn.Module):
    """Follows the backbone contract: layer_id(name) and num_layers."""

    num_layers = 2

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.neck = nn.Conv2d(8, 8, 1)
        self.neck_norm = D2LayerNorm(8)
        self.rein = Rein(num_layers=2, embed_dim=8, num_tokens=3, rank=2)

    def layer_id(self, name):
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_feat = nn.Embedding(5, 8)
        self.level_embed = nn.Parameter(torch.zeros(3, 8))
        self.predictor = nn.Linear(8, 4)
        self.norm = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm2d(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


class _Model(nn.Module):
    def __init__(self, backbone=None):
        super().__init__()
        self.backbone = backbone if backbone is not None else _FakeBackbone()
        self.head = _Head()


# name -> (layer id, weight decay) for the fake backbone; computed by hand from the rules
_BACKBONE_EXPECTED = {
    "backbone.patch_embed.weight": (0, WD),
    "backbone.patch_embed.bias": (0, WD_BIAS),
    "backbone.pos_embed": (0, WD_EMBED),
    "backbone.cls_token": (0, WD_EMBED),
    "backbone.blocks.0.norm.weight": (1, WD_NORM),
    "backbone.blocks.0.norm.bias": (1, WD_NORM),
    "backbone.blocks.0.fc.weight": (1, WD),
    "backbone.blocks.0.fc.bias": (1, WD_BIAS),
    "backbone.blocks.1.norm.weight": (2, WD_NORM),
    "backbone.blocks.1.norm.bias": (2, WD_NORM),
    "backbone.blocks.1.fc.weight": (2, WD),
    "backbone.blocks.1.fc.bias": (2, WD_BIAS),
    "backbone.neck.weight": (3, WD),
    "backbone.neck.bias": (3, WD_BIAS),
    "backbone.neck_norm.weight": (3, WD_NORM),
    "backbone.neck_norm.bias": (3, WD_NORM),
    "backbone.rein.tokens_a": (3, WD_EMBED),
    "backbone.rein.tokens_b": (3, WD_EMBED),
    "backbone.rein.scale": (3, WD_EMBED),
    "backbone.rein.token_proj.weight": (3, WD),
    "backbone.rein.token_proj.bias": (3, WD_BIAS),
    "backbone.rein.feat_proj.weight": (3, WD),
    "backbone.rein.feat_proj.bias": (3, WD_BIAS),
}
_HEAD_EXPECTED = {
    "head.query_feat.weight": WD_EMBED,
    # A plain parameter named level_embed (Mask2Former's pixel decoder): the default decay, as
    # in official Mask2Former's optimizer (it was WEIGHT_DECAY_EMBED before).
    "head.level_embed": WD,
    "head.predictor.weight": WD,
    "head.predictor.bias": WD_BIAS,
    "head.norm.weight": WD_NORM,
    "head.norm.bias": WD_NORM,
    "head.bn.weight": WD_NORM,
    "head.bn.bias": WD_NORM,
}


def _groups(model, **overrides):
    kwargs = dict(
        base_lr=BASE_LR,
        weight_decay=WD,
        weight_decay_norm=WD_NORM,
        weight_decay_bias=WD_BIAS,
        weight_decay_embed=WD_EMBED,
        backbone_multiplier=0.1,
        layer_decay=1.0,
    )
    kwargs.update(overrides)
    return get_param_groups(model, **kwargs)


def _assignment(model, groups):
    """name -> (lr, weight decay), asserting that every parameter is in exactly one group."""
    by_id = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in by_id, "parameter in two groups"
            by_id[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def test_layer_decay_groups():
    model = _Model()
    groups = _groups(model, layer_decay=0.5)
    got = _assignment(model, groups)
    # lr = base * 0.5 ** (num_layers + 1 - layer_id), num_layers = 2
    lr_of_layer = {0: 1.25e-5, 1: 2.5e-5, 2: 5e-5, 3: 1e-4}
    expected = {n: (lr_of_layer[layer], wd) for n, (layer, wd) in _BACKBONE_EXPECTED.items()}
    expected.update({n: (BASE_LR, wd) for n, wd in _HEAD_EXPECTED.items()})
    assert set(got) == set(expected)  # frozen head.frozen.* left out, nothing else
    for name, (lr, wd) in expected.items():
        assert got[name][0] == pytest.approx(lr), name
        assert got[name][1] == wd, name
    # groups are merged: one per distinct (lr, weight decay)
    assert len(groups) == len(set(expected.values()))


def test_backbone_multiplier_groups():
    model = _Model()
    got = _assignment(model, _groups(model, backbone_multiplier=0.1, weight_decay_bias=None))
    for name, (_, wd) in _BACKBONE_EXPECTED.items():
        assert got[name] == (pytest.approx(1e-5), WD if wd == WD_BIAS else wd), name
    for name, wd in _HEAD_EXPECTED.items():
        assert got[name] == (BASE_LR, WD if wd == WD_BIAS else wd), name
    assert "head.frozen.weight" not in got and "head.frozen.bias" not in got


def test_backbone_without_layer_id():
    class _Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

    model = _Model(backbone=_Plain())
    with pytest.raises(ValueError, match="layer_id"):
        _groups(model, layer_decay=0.9)
    got = _assignment(model, _groups(model, layer_decay=1.0, backbone_multiplier=0.5))
    assert got["backbone.conv.weight"][0] == pytest.approx(5e-5)


def test_bad_layer_id_and_arguments():
    backbone = _FakeBackbone()
    backbone.layer_id = lambda name: 7
    with pytest.raises(ValueError, match="layer_id"):
        _groups(_Model(backbone), layer_decay=0.8)
    with pytest.raises(ValueError, match="LAYER_DECAY"):
        _groups(_Model(), layer_decay=1.5)
    with pytest.raises(ValueError, match="BACKBONE_MULTIPLIER"):
        _groups(_Model(), backbone_multiplier=-1.0)


def test_shared_parameter_appears_once():
    model = _Model()
    model.head.tied = nn.Linear(8, 8, bias=False)
    model.head.tied.weight = model.backbone.blocks[0].fc.weight  # one tensor, two names
    groups = _groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert id(model.head.tied.weight) in ids


def _cfg(**solver):
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = WD
    for key, value in solver.items():
        node = cfg.SOLVER
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


def test_build_optimizer_types():
    model = _Model()
    adamw = build_optimizer(_cfg(OPTIMIZER="ADAMW", LAYER_DECAY=0.5), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in adamw.param_groups) == 31
    sgd = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 for g in sgd.param_groups)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), model)
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_optimizer(
            _cfg(**{"CLIP_GRADIENTS.ENABLED": True, "CLIP_GRADIENTS.CLIP_TYPE": "total"}), model
        )


def _fill_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen) * 3


def test_full_model_clipping_matches_clip_grad_norm():
    model = _Model()
    reference = copy.deepcopy(model)
    cfg = _cfg(
        OPTIMIZER="SGD",
        BASE_LR=1.0,
        WEIGHT_DECAY=0.0,
        WEIGHT_DECAY_BIAS=0.0,
        WEIGHT_DECAY_EMBED=0.0,
        MOMENTUM=0.0,
        BACKBONE_MULTIPLIER=1.0,
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "full_model",
            "CLIP_GRADIENTS.CLIP_VALUE": 0.01,
        },
    )
    optimizer = build_optimizer(cfg, model)
    _fill_grads(model, 1)
    _fill_grads(reference, 1)
    trainable = [p for p in reference.parameters() if p.requires_grad]
    total = torch.nn.utils.clip_grad_norm_(trainable, 0.01)
    assert total > 1.0  # clipping is active
    optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=name)
            # SGD with lr 1: p_new = p_old - clipped grad
            torch.testing.assert_close(p.detach(), (q - q.grad).detach(), msg=name)
    total_after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable]))
    assert total_after == pytest.approx(0.01, rel=1e-4)


def test_per_parameter_norm_clipping():
    model = _Model()
    cfg = _cfg(
        OPTIMIZER="SGD",
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "norm",
            "CLIP_GRADIENTS.CLIP_VALUE": 0.5,
        },
    )
    optimizer = build_optimizer(cfg, model)
    _fill_grads(model, 2)
    optimizer.step()
    norms = [p.grad.norm().item() for p in model.parameters() if p.requires_grad]
    assert max(norms) == pytest.approx(0.5, rel=1e-4)  # each clipped on its own


def test_warmup_poly_schedule():
    model = nn.Linear(2, 2)
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        BASE_LR=1.0,
        MAX_ITER=100,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="linear",
        POLY_LR_POWER=0.9,
    )
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 0.5}], lr=1.0
    )
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    end_of_warmup = (1 - 10 / 100) ** 0.9
    expected = {
        0: 0.1,
        5: 0.1 + (end_of_warmup - 0.1) * 5 / 10,  # linear ramp to the poly value at iter 10
        10: (1 - 10 / 100) ** 0.9,
        50: (1 - 50 / 100) ** 0.9,
        99: (1 - 99 / 100) ** 0.9,
    }
    for it, factor in expected.items():
        assert lrs[it][0] == pytest.approx(factor, rel=1e-6), it
        assert lrs[it][1] == pytest.approx(0.5 * factor, rel=1e-6), it


def test_other_schedules_delegate_to_detectron2():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR=1.0, MAX_ITER=100, WARMUP_ITERS=0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="MAX_ITER"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=0), optimizer)


def _official_mask2former_rule(module_name, module, param_name, backbone_multiplier):
    """(lr, weight decay) of one parameter by official Mask2Former's ``build_optimizer``
    (train_net.py), written out from its rules."""
    lr = BASE_LR * (backbone_multiplier if "backbone" in module_name else 1.0)
    decay = WD
    if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
        decay = 0.0
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    if isinstance(module, norm_types):
        decay = WD_NORM
    if isinstance(module, nn.Embedding):
        decay = WD_EMBED
    return lr, decay


def test_mask2former_head_groups_follow_the_official_optimizer():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_sem_seg_head

    from vlt_common.engine.defaults import get_vlt_cfg
    from vltseg.modeling import build_criterion

    cfg = get_vlt_cfg()
    # VLTSeg's values of Detectron2's SEM_SEG_HEAD keys (the Mask2Former head) are in its base
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                     "Base-VLTSeg.yaml"))
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 2
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = True
    shapes = {f"res{i}": ShapeSpec(channels=16, stride=2**i) for i in range(2, 6)}

    model = nn.Module()
    model.backbone = _FakeBackbone()
    model.sem_seg_head = build_sem_seg_head(cfg, shapes)
    model.criterion = build_criterion(cfg)
    got = _assignment(model, _groups(model, weight_decay_bias=None))
    expected = {}
    for module_name, module in model.sem_seg_head.named_modules():
        for local, _ in module.named_parameters(recurse=False):
            name = f"sem_seg_head.{module_name}.{local}" if module_name else local
            expected[name] = _official_mask2former_rule(module_name, module, local, 0.1)
    assert len(expected) > 60
    # The plain-parameter level embedding of the pixel decoder decays; the decoder's does not.
    assert expected["sem_seg_head.pixel_decoder.transformer.level_embed"] == (BASE_LR, WD)
    assert expected["sem_seg_head.predictor.level_embed.weight"] == (BASE_LR, WD_EMBED)
    for name, (lr, decay) in expected.items():
        assert got[name][0] == pytest.approx(lr), name
        assert got[name][1] == decay, name


def test_cpu_optimizer_is_not_fused_and_clipping_unscales_first():
    model = _Model()
    plain = build_optimizer(_cfg(OPTIMIZER="ADAMW"), model)
    assert not plain.defaults["fused"]  # fused AdamW only for CUDA parameters
    clipped = build_optimizer(
        _cfg(
            OPTIMIZER="ADAMW",
            **{"CLIP_GRADIENTS.ENABLED": True, "CLIP_GRADIENTS.CLIP_TYPE": "full_model"},
        ),
        model,
    )
    # GradScaler must unscale before the clipping step sees the gradients, fused or not.
    assert clipped._step_supports_amp_scaling is False
