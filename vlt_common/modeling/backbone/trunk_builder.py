"""
Build a ViT trunk by name: an open_clip model's image tower or a timm ViT, optionally shrunk,
with its patch size, drop-path rate and pre-trained weights.

Position-embedding grid: by default a trunk keeps the grid it was pre-trained with (e.g. 16 x 16
for EVA02-L/14 at 224 px, 37 x 37 for DINOv2) even when its patch kernel is resampled to 16, so
that the checkpoint's position embeddings load unchanged; the backbone interpolates them to every
input's grid in the forward pass. ``pos_embed_grid`` instead resizes them once at load time (Rein
converts DINOv2's 37 x 37 to 32 x 32 for 512 px crops).

open_clip towers are built with its public ``create_model`` (no builder of the image tower alone is
public), given the image tower's config and a minimal text tower that is dropped at once.
"""
import logging
import os
from typing import Dict, Optional, Sequence

import open_clip
import timm
import torch
from timm.layers import DropPath, calculate_drop_path_rates
from torch import nn

# Importing the adapters registers them.
from . import openclip_vit, timm_eva, timm_sam, timm_vit  # noqa: F401
from .conversion import PATCH_RESAMPLE_MODES
from .trunk_adapter import get_trunk_adapter
from .weights import load_trunk_state_dict, read_checkpoint

__all__ = ["build_trunk", "expected_weights", "warn_if_openai_weights"]

logger = logging.getLogger(__name__)

# ARCH values with this prefix name a timm model; anything else is an open_clip model name.
TIMM_PREFIX = "timm:"
# The text tower open_clip's create_model builds next to the image tower: as small as it can be,
# it is discarded right away.
_TINY_TEXT_CFG = dict(context_length=2, vocab_size=2, width=8, heads=1, layers=1)


def expected_weights(arch: str) -> str:
    """
    Args:
        arch (str): a MODEL.VLT_BACKBONE.ARCH value.

    Returns:
        str: the files users download for ``arch``, for error messages.
    """
    if arch.startswith(TIMM_PREFIX):
        return (
            f"a checkpoint of the timm model {arch[len(TIMM_PREFIX):]} (timm .safetensors / .bin, "
            "or the original release's .pth)"
        )
    config = open_clip.get_model_config(arch) or {}
    timm_name = config.get("vision_cfg", {}).get("timm_model_name") or ""
    if timm_name.startswith("eva"):
        return f"the EVA-CLIP EVA02_CLIP_*.pt or an open_clip checkpoint of {arch}"
    if timm_name:
        return f"an open_clip checkpoint of {arch} (.bin / .safetensors)"
    return f"the OpenAI CLIP {arch}.pt or an open_clip checkpoint of {arch} (.bin / .safetensors)"


def build_trunk(
    arch: str,
    *,
    embed_dim: int = 0,
    depth: int = 0,
    num_heads: int = 0,
    patch_size: int = 16,
    drop_path_rate: float = 0.0,
    pretrained: str = "",
    clip_head: bool = False,
    patch_resample: str = "pinv",
    pos_embed_grid: Sequence[int] = (),
) -> nn.Module:
    """
    Build the image tower named ``arch`` with its weights, for :class:`CLIPViTBackbone` (which
    removes the pooling head).

    Args:
        arch (str): an open_clip model name ("ViT-B-16", "ViT-L-14", "EVA02-B-16", "EVA02-L-14",
            any other open_clip ViT) or "timm:<timm model name>" (e.g.
            "timm:vit_large_patch14_dinov2", "timm:samvit_base_patch16"). OpenAI's CLIP was
            trained with QuickGELU: its TorchScript archives select it by themselves, OpenAI
            weights re-saved as open_clip state dicts need the "-quickgelu" name
            ("ViT-B-16-quickgelu").
        embed_dim, depth, num_heads (int): shrink the architecture (0 keeps its value). With
            ``num_heads`` 0 and a new ``embed_dim``, the architecture's head width is kept.
        patch_size (int): patch size to run at; a pre-trained kernel of another size is resampled
            with ``patch_resample``. 0 keeps the architecture's patch size.
        drop_path_rate (float): stochastic depth of the last block, linearly increasing from 0.
        pretrained (str): local checkpoint path ("" keeps the random initialization).
        clip_head (bool): keep (and load) the tower's final norm and projection to the CLIP
            embedding space (the adapter's ``clip_head_names``), for DenseCLIP's pixel
            embeddings; only for open_clip CLIP towers.
        patch_resample (str): "pinv" (timm's ``resample_patch_embed``) or "interpolate" (bicubic
            interpolation of the kernel, Rein's DINOv2 conversion); see ``conversion.py``.
        pos_embed_grid (list[int]): (rows, columns) of the stored position embeddings; a
            checkpoint's grid is resized to it once at load time (bicubic, no antialias). Empty
            keeps the architecture's pre-training grid.

    Returns:
        nn.Module: the trunk (open_clip ``VisionTransformer`` or a timm model).
    """
    if patch_resample not in PATCH_RESAMPLE_MODES:
        raise ValueError(
            f"MODEL.VLT_BACKBONE.PATCH_RESAMPLE must be one of {PATCH_RESAMPLE_MODES}, got "
            f"'{patch_resample}'."
        )
    grid = tuple(int(g) for g in pos_embed_grid)
    if grid and (len(grid) != 2 or min(grid) < 1):
        raise ValueError(
            f"MODEL.VLT_BACKBONE.POS_EMBED_GRID must be [] or [rows, columns], got {list(grid)}."
        )
    checkpoint, fmt = None, None
    if pretrained:
        # Read first: a missing file fails before a large model is built, and OpenAI archives
        # decide the activation.
        checkpoint, fmt = read_checkpoint(pretrained, expected=expected_weights(arch))
    shrink = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    if arch.startswith(TIMM_PREFIX):
        if clip_head:
            raise ValueError(
                f"MODEL.VLT_BACKBONE.ARCH '{arch}' names a timm model, which has no CLIP "
                "projection; the CLIP head (DenseCLIP text head) needs an open_clip model name."
            )
        trunk = _build_timm(arch[len(TIMM_PREFIX) :], shrink, patch_size, drop_path_rate, grid)
    else:
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(
                f"MODEL.VLT_BACKBONE.ARCH '{arch}' is neither an open_clip model (e.g. ViT-B-16, "
                f"EVA02-L-14; see open_clip.list_models()) nor '{TIMM_PREFIX}<timm model name>'."
            )
        vision_cfg = config["vision_cfg"]
        # The CLIP projection's output width (only built with clip_head).
        clip_dim = config["embed_dim"] if clip_head else 0
        if vision_cfg.get("timm_model_name"):
            if clip_head and vision_cfg.get("timm_proj"):
                raise ValueError(
                    f"{arch}: open_clip projects this timm tower outside the trunk "
                    f"(timm_proj={vision_cfg['timm_proj']!r}); the CLIP head is not supported."
                )
            trunk = _build_timm(
                vision_cfg["timm_model_name"], shrink, patch_size, drop_path_rate, grid, clip_dim
            )
        else:
            # OpenAI's CLIP was trained with QuickGELU; its TorchScript archives need it.
            quick_gelu = config.get("quick_gelu", False) or fmt == "torchscript"
            if quick_gelu and not config.get("quick_gelu", False):
                logger.info("OpenAI CLIP archive '%s': %s uses QuickGELU.", pretrained, arch)
            elif not quick_gelu and pretrained:
                warn_if_openai_weights(arch, pretrained)
            trunk = _build_openclip(
                arch, vision_cfg, shrink, patch_size, drop_path_rate, quick_gelu, grid, clip_dim
            )
    if checkpoint is not None:
        load_trunk_state_dict(
            trunk,
            checkpoint,
            source=pretrained,
            patch_resample=patch_resample,
            clip_head=clip_head,
        )
    return trunk


def warn_if_openai_weights(arch: str, path: str) -> bool:
    """
    Warn loudly when a file named like OpenAI's CLIP weights is loaded into a GELU tower.

    OpenAI trained CLIP with QuickGELU. Its TorchScript archives are recognized by their format,
    but the same weights re-saved as open_clip state dicts (e.g. the Hugging Face hub's
    ``timm/vit_base_patch16_clip_224.openai``) hold exactly the keys of any other open_clip
    checkpoint; only their name tells. Under a plain ``ViT-B-16`` they would run with GELU.

    Args:
        arch (str): an open_clip model name without QuickGELU.
        path (str): the checkpoint file.

    Returns:
        bool: whether the warning was given.
    """
    # The file name and its folder (the Hugging Face hub names the folder after the model).
    parts = os.path.normpath(os.path.abspath(path)).lower().split(os.sep)[-2:]
    if not any("openai" in part for part in parts):
        return False
    logger.warning(
        "'%s' looks like OpenAI's CLIP weights (its name says 'openai'), but "
        "MODEL.VLT_BACKBONE.ARCH '%s' runs GELU. OpenAI's CLIP was trained with QuickGELU: set "
        "ARCH to '%s-quickgelu' (or load OpenAI's TorchScript .pt, which selects it).",
        path,
        arch,
        arch,
    )
    return True


def _resolve_heads(shrink: Dict[str, int], width: int, heads: int) -> Optional[int]:
    """Number of heads for a shrunk width (None: unchanged)."""
    if not shrink["embed_dim"] and not shrink["num_heads"]:
        return None
    new_width = shrink["embed_dim"] or width
    new_heads = shrink["num_heads"] or new_width // (width // heads)
    if new_heads < 1 or new_width % new_heads:
        raise ValueError(
            f"MODEL.VLT_BACKBONE.EMBED_DIM {new_width} cannot be split into "
            f"{new_heads} attention heads; set MODEL.VLT_BACKBONE.NUM_HEADS to a divisor of it."
        )
    return new_heads


def _build_timm(name, shrink, patch_size, drop_path_rate, pos_grid, clip_dim=0):
    with torch.device("meta"):
        # The architecture at its defaults, without allocating weights: its patch size, grid,
        # width and depth decide the build arguments.
        native = timm.create_model(name, pretrained=False)
    adapter = get_trunk_adapter(native)
    patch = patch_size or adapter.patch_size(native)
    grid = pos_grid or adapter.grid_size(native)
    depth = shrink["depth"] or len(adapter.blocks(native))
    kwargs = dict(
        # clip_dim > 0: timm's head is the CLIP projection (open_clip's timm towers)
        num_classes=clip_dim,
        patch_size=patch,
        img_size=(grid[0] * patch, grid[1] * patch),
        drop_path_rate=drop_path_rate,
        **adapter.timm_create_kwargs(native, depth),
    )
    if shrink["embed_dim"]:
        kwargs["embed_dim"] = shrink["embed_dim"]
    if shrink["depth"]:
        kwargs["depth"] = shrink["depth"]
    heads = _resolve_heads(shrink, adapter.embed_dim(native), adapter.num_heads(native))
    if heads is not None:
        kwargs["num_heads"] = heads
    return timm.create_model(name, pretrained=False, **kwargs)


class _DropRandomInitWarning(logging.Filter):
    """create_model warns that the model is "initialized randomly"; the trunk's weights load
    after it is built (or it is meant to be random), so the warning would mislead."""

    def filter(self, record):
        return not record.getMessage().startswith("No pretrained weights loaded")


_RANDOM_INIT_FILTER = _DropRandomInitWarning()


def _build_openclip(
    arch, vision_cfg, shrink, patch_size, drop_path_rate, quick_gelu, pos_grid, clip_dim=0
):
    cfg = dict(vision_cfg)
    native_patch = cfg.get("patch_size", 16)
    image_size = cfg.get("image_size", 224)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    patch = patch_size or native_patch
    cfg["patch_size"] = patch
    grid = pos_grid or [s // native_patch for s in size]
    cfg["image_size"] = [g * patch for g in grid]
    cfg["patch_dropout"] = 0.0
    width = cfg.get("width", 768)
    heads = _resolve_heads(shrink, width, width // cfg.get("head_width", 64))
    if shrink["embed_dim"]:
        cfg["width"] = shrink["embed_dim"]
    if shrink["depth"]:
        cfg["layers"] = shrink["depth"]
    if heads is not None:
        cfg["head_width"] = cfg.get("width", width) // heads
    # Without clip_dim the projection width is irrelevant: the projection is removed with the head.
    root = logging.getLogger()
    root.addFilter(_RANDOM_INIT_FILTER)
    try:
        clip = open_clip.create_model(
            arch,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            embed_dim=clip_dim or width,
            vision_cfg=cfg,
            text_cfg=_TINY_TEXT_CFG,
        )
    finally:
        root.removeFilter(_RANDOM_INIT_FILTER)
    trunk = clip.visual
    if drop_path_rate > 0:
        _add_drop_path(trunk, drop_path_rate)
    return trunk


def _add_drop_path(trunk, drop_path_rate):
    """open_clip's blocks have no stochastic depth; put it where their layer scales sit."""
    blocks = trunk.transformer.resblocks
    for block, rate in zip(blocks, calculate_drop_path_rates(drop_path_rate, len(blocks))):
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise ValueError(
                "MODEL.VLT_BACKBONE.DROP_PATH_RATE > 0 is not supported for open_clip towers with "
                "layer scale."
            )
        # Each residual branch ends in ls_1 / ls_2 (x + ls_1(attn(...))), so a DropPath there
        # drops exactly the branch, as in timm's blocks.
        block.ls_1 = DropPath(rate)
        block.ls_2 = DropPath(rate)
