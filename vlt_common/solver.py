"""Optimizer and lr schedule of VLT: parameter groups with layer-wise lr decay or a backbone lr
multiplier, no weight decay on norms and embeddings, full-model gradient clipping, and the
"WarmupPolyLR" schedule.

Keys read: SOLVER.{OPTIMIZER, BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS,
WEIGHT_DECAY_EMBED, BACKBONE_MULTIPLIER, LAYER_DECAY, MOMENTUM, NESTEROV, CLIP_GRADIENTS.*,
LR_SCHEDULER_NAME, POLY_LR_POWER, WARMUP_FACTOR, WARMUP_ITERS, WARMUP_METHOD, RESCALE_INTERVAL,
MAX_ITER}.
"""
import logging
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

import torch
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from timm import layers as timm_layers
from torch import nn

__all__ = ["build_optimizer", "build_lr_scheduler", "get_param_groups", "EMBEDDING_NAMES"]

logger = logging.getLogger(__name__)

# Normalization layers, matched by type. open_clip's and timm's LayerNorm variants subclass
# nn.LayerNorm; detectron2's channels-first LayerNorm and timm's RMS / "simple" norms do not.
_NORM_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    D2LayerNorm,
    timm_layers.RmsNorm,
    timm_layers.RmsNorm2d,
    timm_layers.RmsNormFp32,
    timm_layers.RmsNorm2dFp32,
    timm_layers.SimpleNorm,
    timm_layers.SimpleNorm2d,
    timm_layers.SimpleNormFp32,
    timm_layers.SimpleNorm2dFp32,
)

# Names (any component of a parameter's dotted name) of embeddings trained with
# SOLVER.WEIGHT_DECAY_EMBED: ViT position embeddings and class / register tokens (timm,
# open_clip), Mask2Former's query embeddings. Also: names starting with "rel_pos"
# (ViTDet / SAM relative position tables), every nn.Embedding, and whatever a module lists in its
# ``no_weight_decay()`` (the timm convention; Rein lists its tokens and scale there).
# Not "level_embed": as in official Mask2Former's optimizer, the pixel decoder's plain-parameter
# ``transformer.level_embed`` gets SOLVER.WEIGHT_DECAY (0.05), the decoder's nn.Embedding one
# WEIGHT_DECAY_EMBED.
EMBEDDING_NAMES = frozenset(
    {
        "pos_embed",
        "absolute_pos_embed",
        "positional_embedding",
        "cls_token",
        "class_embedding",
        "reg_token",
        "dist_token",
        "query_embed",
        "query_feat",
        "relative_position_bias_table",
    }
)


def _declared_no_weight_decay(model: nn.Module) -> Set[str]:
    """Full names of parameters that modules declare through ``no_weight_decay()``."""
    names = set()
    for module_name, module in model.named_modules():
        declare = getattr(module, "no_weight_decay", None)
        if not callable(declare):
            continue
        prefix = f"{module_name}." if module_name else ""
        names.update(prefix + name for name in declare())
    return names


def _declared_weight_decay(model: nn.Module) -> Dict[str, float]:
    """Full name -> weight decay of the parameters that modules give their own decay through
    ``weight_decay_overrides()`` (local parameter name -> decay), e.g. DenseCLIP's context
    vectors and gamma (MODEL.VLTSEG.TEXT_HEAD.WEIGHT_DECAY)."""
    decays = {}
    for module_name, module in model.named_modules():
        declare = getattr(module, "weight_decay_overrides", None)
        if not callable(declare):
            continue
        prefix = f"{module_name}." if module_name else ""
        decays.update({prefix + name: float(decay) for name, decay in declare().items()})
    return decays


def _is_embedding(name: str, module: nn.Module, declared: Set[str]) -> bool:
    if name in declared or isinstance(module, nn.Embedding):
        return True
    parts = name.split(".")
    return any(p in EMBEDDING_NAMES or p.startswith("rel_pos") for p in parts)


def _backbone_lr_scale_fn(
    model: nn.Module, backbone_multiplier: float, layer_decay: float
) -> Callable[[str], float]:
    """
    Returns a function mapping a full parameter name to its lr factor: 1 for the head and for the
    adapters the backbone lists in ``adapter_parameter_names()`` (Rein); for other "backbone.*"
    either ``backbone_multiplier`` or ``layer_decay ** (num_layers + 1 - layer_id)``.
    """
    backbone = getattr(model, "backbone", None)
    declare = getattr(backbone, "adapter_parameter_names", None)
    adapters = {"backbone." + n for n in declare()} if callable(declare) else set()
    if layer_decay == 1.0:
        return lambda name: (
            backbone_multiplier
            if name.startswith("backbone.") and name not in adapters
            else 1.0
        )

    if not (callable(getattr(backbone, "layer_id", None)) and hasattr(backbone, "num_layers")):
        raise ValueError(
            f"SOLVER.LAYER_DECAY={layer_decay} < 1 needs model.backbone to provide "
            f"layer_id(name) and num_layers (the VLT backbone contract); "
            f"{type(backbone).__name__} does not. Set SOLVER.LAYER_DECAY to 1.0 to use "
            f"SOLVER.BACKBONE_MULTIPLIER instead."
        )
    num_layers = int(backbone.num_layers)

    def scale(name: str) -> float:
        if not name.startswith("backbone.") or name in adapters:
            return 1.0
        layer = backbone.layer_id(name[len("backbone.") :])
        if not 0 <= layer <= num_layers + 1:
            raise ValueError(
                f"{type(backbone).__name__}.layer_id({name[len('backbone.'):]!r}) returned "
                f"{layer}; expected an integer in [0, num_layers + 1 = {num_layers + 1}]"
            )
        return layer_decay ** (num_layers + 1 - layer)

    return scale


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_bias: Optional[float],
    weight_decay_embed: float,
    backbone_multiplier: float,
    layer_decay: float,
) -> List[Dict[str, Any]]:
    """
    Split the trainable parameters of ``model`` into optimizer groups.

    lr: parameters under ``model.backbone`` get ``base_lr * backbone_multiplier`` when
    ``layer_decay == 1``, otherwise ``base_lr * layer_decay ** (num_layers + 1 - layer_id)`` with
    ``layer_id = model.backbone.layer_id(name relative to the backbone)`` (0: embeddings,
    i + 1: block i, num_layers + 1: what follows the blocks, full lr); every other parameter
    gets ``base_lr``, and so do the adapters the backbone declares through
    ``adapter_parameter_names()`` (names relative to the backbone; Rein's parameters, which
    official Rein trains at the base lr).

    weight decay, first rule that applies: a decay a module declares for its own parameters
    (``weight_decay_overrides()``, local name -> decay); parameters of normalization layers (by
    module type) get ``weight_decay_norm``; embeddings (:data:`EMBEDDING_NAMES`, ``rel_pos*``,
    ``nn.Embedding``, names a module lists in ``no_weight_decay()``) get ``weight_decay_embed``;
    biases (``bias`` or ``*_bias``) get ``weight_decay_bias`` (None: ``weight_decay``); the rest
    ``weight_decay``.

    Parameters with ``requires_grad=False`` are left out; a parameter shared by several modules
    appears once. Groups with equal (lr, weight_decay) are merged.

    Args:
        model (nn.Module): the model (a DDP / DataParallel wrapper is looked through).
        base_lr (float): lr of the head.
        weight_decay (float): default weight decay.
        weight_decay_norm (float): weight decay of normalization layers.
        weight_decay_bias (float or None): weight decay of biases; None follows weight_decay.
        weight_decay_embed (float): weight decay of embeddings and tokens.
        backbone_multiplier (float): lr factor of the backbone when layer_decay is 1.
        layer_decay (float): layer-wise lr decay rate in (0, 1]; 1 disables it.

    Returns:
        list[dict]: groups with keys "params" (list[Parameter]), "lr", "weight_decay".
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY must be in (0, 1], got {layer_decay}")
    if backbone_multiplier < 0.0:
        raise ValueError(f"SOLVER.BACKBONE_MULTIPLIER must be >= 0, got {backbone_multiplier}")
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # names must be relative to the model ("backbone.…")
    lr_scale = _backbone_lr_scale_fn(model, backbone_multiplier, layer_decay)
    declared = _declared_no_weight_decay(model)
    overrides = _declared_weight_decay(model)

    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen: Set[int] = set()
    for module_name, module in model.named_modules():
        for local_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{local_name}" if module_name else local_name
            if name in overrides:
                decay = overrides[name]
            elif isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif _is_embedding(name, module, declared):
                decay = weight_decay_embed
            elif local_name == "bias" or local_name.endswith("_bias"):
                decay = weight_decay_bias
            else:
                decay = weight_decay
            groups.setdefault((base_lr * lr_scale(name), decay), []).append(param)

    result = [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]
    logger.info(
        "Optimizer parameter groups (lr, weight decay, #tensors): %s",
        ", ".join(f"({g['lr']:.3g}, {g['weight_decay']:g}, {len(g['params'])})" for g in result),
    )
    return result


def _all_on_cuda(params: List[torch.Tensor]) -> bool:
    return bool(params) and all(p.device.type == "cuda" for p in params)


def _with_full_model_clipping(
    optimizer_cls: Type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """
    A subclass of ``optimizer_cls`` whose ``step`` first rescales all gradients together so that
    their total norm is at most ``max_norm`` (Mask2Former's "full_model" clipping). Under AMP,
    GradScaler.step unscales the gradients before it calls ``step``, so the norm is the true one.
    """

    class FullModelGradientClipping(optimizer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # A fused optimizer would let GradScaler hand it still-scaled gradients (it unscales
            # inside its kernel); the clipping needs the true ones, so GradScaler unscales first.
            self._step_supports_amp_scaling = False

        def step(self, closure=None):
            if closure is not None:
                raise ValueError("full-model gradient clipping does not support a closure")
            params = [p for group in self.param_groups for p in group["params"]]
            # One multi-tensor kernel per device and dtype on CUDA; no host sync either way.
            foreach = True if _all_on_cuda(params) else None
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, foreach=foreach)
            return super().step()

    FullModelGradientClipping.__name__ = f"{optimizer_cls.__name__}WithFullModelGradientClip"
    FullModelGradientClipping.__qualname__ = FullModelGradientClipping.__name__
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """
    Build AdamW (fused when every parameter is on a CUDA device) or SGD over
    :func:`get_param_groups`, with gradient clipping when
    SOLVER.CLIP_GRADIENTS.ENABLED: CLIP_TYPE "full_model" clips the norm of all gradients
    together to CLIP_VALUE (Mask2Former); "value" / "norm" use detectron2's per-parameter clipping.

    Args:
        cfg (CfgNode): a config with the VLT solver keys (:func:`vlt_common.config
            .add_vlt_common_config`).
        model (nn.Module): the model, before DDP wrapping.

    Returns:
        torch.optim.Optimizer
    """
    solver = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        layer_decay=solver.LAYER_DECAY,
    )
    if not groups:
        raise ValueError("build_optimizer: the model has no parameter with requires_grad=True")

    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls = torch.optim.AdamW
        kwargs = {"lr": solver.BASE_LR, "weight_decay": solver.WEIGHT_DECAY}
        # Fused (one kernel for all parameters) on CUDA; the CPU keeps PyTorch's default
        # implementation (fused AdamW is CUDA-only in some PyTorch versions). Not under
        # Detectron2's per-parameter clipping, whose wrapper would see AMP-scaled gradients.
        per_parameter_clip = solver.CLIP_GRADIENTS.ENABLED and (
            solver.CLIP_GRADIENTS.CLIP_TYPE != "full_model"
        )
        if _all_on_cuda([p for g in groups for p in g["params"]]) and not per_parameter_clip:
            kwargs["fused"] = True
    elif name == "SGD":
        optimizer_cls = torch.optim.SGD
        kwargs = {
            "lr": solver.BASE_LR,
            "momentum": solver.MOMENTUM,
            "nesterov": solver.NESTEROV,
            "weight_decay": solver.WEIGHT_DECAY,
        }
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {solver.OPTIMIZER!r}")

    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        if clip.CLIP_VALUE <= 0:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for full_model clipping, "
                f"got {clip.CLIP_VALUE}"
            )
        optimizer_cls = _with_full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        return optimizer_cls(groups, **kwargs)
    if clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model', 'value' or 'norm', "
            f"got {clip.CLIP_TYPE!r}"
        )
    # detectron2 wraps the class only when clipping is enabled
    return maybe_add_gradient_clipping(cfg, optimizer_cls)(groups, **kwargs)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """
    "WarmupPolyLR": every group's lr is multiplied by ``(1 - iter / MAX_ITER) ** POLY_LR_POWER``
    after a warmup of WARMUP_ITERS iterations (WARMUP_METHOD "linear" from WARMUP_FACTOR to the
    poly value at the end of the warmup, or "constant"). After the warmup this equals
    Mask2Former's / DeepLab's WarmupPolyLR; during it, theirs multiplies the warmup ramp with the
    poly factor instead. Any other SOLVER.LR_SCHEDULER_NAME goes to detectron2's
    ``build_lr_scheduler``.

    Args:
        cfg (CfgNode):
        optimizer (torch.optim.Optimizer):

    Returns:
        torch.optim.lr_scheduler.LRScheduler: step it once per iteration.
    """
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    if solver.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be > 0, got {solver.MAX_ITER}")
    poly = PolynomialDecayParamScheduler(base_value=1.0, power=solver.POLY_LR_POWER)
    schedule = WarmupParamScheduler(
        poly,
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
        solver.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=solver.MAX_ITER)
