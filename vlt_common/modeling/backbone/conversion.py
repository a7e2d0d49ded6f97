"""
Conversions of a checkpoint's patch kernel and position embeddings to a trunk's patch size and
grid, and the run-time interpolation of position embeddings to an input's grid.

Two kernel conversions (``MODEL.VLT_BACKBONE.PATCH_RESAMPLE``):

- ``"pinv"``: timm's ``resample_patch_embed`` (FlexiViT's pseudo-inverse resize), which keeps the
  tokens of a resized image patch equal to the original ones;
- ``"interpolate"``: bicubic interpolation of the kernel itself (``F.interpolate``, no
  antialias), as Rein's ``tools/convert_models/convert_dinov2_*.py`` converts DINOv2's 14x14
  kernel to 16x16. Tokens come out about (16 / 14) ** 2 = 1.3 times larger than with "pinv".

Both convert in float32, whatever the file's dtype (an fp16 kernel resampled in fp16 is off by
~1e-2). Position embeddings whose grid differs from the trunk's are resized once at load time
with bicubic interpolation without antialias (Rein's conversion of DINOv2's 37x37 grid to 32x32).
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from torch import nn

__all__ = [
    "PATCH_RESAMPLE_MODES",
    "resample_patch_kernel",
    "resize_pos_embed",
    "interpolate_pos_embed_dinov2",
    "convert_embeddings",
]

PATCH_RESAMPLE_MODES = ("pinv", "interpolate")
# Names (last components) of patch kernels and absolute position embeddings in the checkpoints
# of every supported family (timm / DINOv2 / EVA / SAM, and open_clip's own ViT).
_KERNEL_NAMES = ("patch_embed.proj.weight", "conv1.weight")
_POS_EMBED_NAMES = ("pos_embed", "positional_embedding")
# Full CLIP models keep the image tower under this prefix (the text tower has its own
# "positional_embedding").
_VISUAL_PREFIX = "visual."


def resample_patch_kernel(kernel: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """
    Args:
        kernel (Tensor): [C_out, C_in, k, k] patch-embedding weight, any floating dtype.
        size (list[int]): the new kernel size (h, w).
        mode (str): one of :data:`PATCH_RESAMPLE_MODES`.

    Returns:
        Tensor: float32 [C_out, C_in, h, w].
    """
    if mode not in PATCH_RESAMPLE_MODES:
        raise ValueError(
            f"MODEL.VLT_BACKBONE.PATCH_RESAMPLE must be one of {PATCH_RESAMPLE_MODES}, got "
            f"'{mode}'."
        )
    kernel = kernel.float()
    if tuple(kernel.shape[-2:]) == tuple(size):
        return kernel
    if mode == "pinv":
        return resample_patch_embed(kernel, list(size), verbose=True)
    return F.interpolate(kernel, size=tuple(size), mode="bicubic", align_corners=False)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int], num_prefix: int
) -> torch.Tensor:
    """
    Resize a position embedding's grid once (bicubic, ``align_corners=False``, no antialias).

    Args:
        pos_embed (Tensor): [1, P + h * w, C] (timm), [P + h * w, C] (open_clip) or
            [1, h, w, C] (SAM), any floating dtype.
        old_grid (list[int]): (h, w) of ``pos_embed``.
        new_grid (list[int]): the target grid.
        num_prefix (int): P, the class / register entries kept unchanged in front (token layouts).

    Returns:
        Tensor: float32, the layout of ``pos_embed`` with the new grid.
    """
    pos = pos_embed.float()
    if pos.ndim == 4:  # [1, h, w, C]
        grid = pos.permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1)
    squeeze = pos.ndim == 2
    if squeeze:
        pos = pos.unsqueeze(0)
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    channels = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    out = torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, channels)], dim=1)
    return out.squeeze(0) if squeeze else out


def interpolate_pos_embed_dinov2(
    pos_embed: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    num_prefix: int,
    offset: float = 0.1,
) -> torch.Tensor:
    """
    DINOv2's run-time interpolation (``interpolate_pos_encoding`` of DINOv2's and Rein's
    ``DinoVisionTransformer``): bicubic, no antialias, with the scale factor
    ``(new + offset) / old`` per axis instead of an output size, and the stored embeddings
    unchanged when the grid is the stored one.

    Args:
        pos_embed (Tensor): [1, P + h * w, C].
        old_grid (list[int]): (h, w) stored.
        new_grid (list[int]): (h', w') of the input.
        num_prefix (int): P.
        offset (float): DINOv2's ``interpolate_offset``.

    Returns:
        Tensor: [1, P + h' * w', C] in the dtype of ``pos_embed``.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dtype = pos_embed.dtype
    pos = pos_embed.float()
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    channels = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    scale = tuple((n + offset) / o for n, o in zip(new_grid, old_grid))
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(grid.shape[-2:]) != tuple(new_grid):
        raise RuntimeError(f"DINOv2 interpolation gave {tuple(grid.shape[-2:])}, not {new_grid}.")
    patches = grid.permute(0, 2, 3, 1).reshape(1, -1, channels)
    return torch.cat([prefix, patches], dim=1).to(dtype)


def convert_embeddings(
    state_dict: Dict[str, torch.Tensor], trunk: nn.Module, grid: Tuple[int, int], mode: str
) -> Dict[str, torch.Tensor]:
    """
    Convert a checkpoint's patch kernel and position embeddings to the trunk's shapes, before the
    family's key conversion (which then finds nothing left to resample).

    A kernel is resampled with ``mode`` (see :func:`resample_patch_kernel`); a position embedding
    with a square grid of another size is resized with :func:`resize_pos_embed`. Both become
    float32. Tensors that cannot be matched to the trunk are left to the family's conversion.

    Args:
        state_dict (dict[str, Tensor]): the checkpoint's tensors, original key names.
        trunk (nn.Module): the trunk the weights are for.
        grid (tuple[int, int]): the trunk's stored position-embedding grid.
        mode (str): one of :data:`PATCH_RESAMPLE_MODES`.

    Returns:
        dict[str, Tensor]: a copy of ``state_dict`` with those tensors replaced.
    """
    targets = {name: p for name, p in trunk.state_dict().items()}
    kernel_target = _find(targets, _KERNEL_NAMES, lambda v: v.ndim == 4)
    pos_target = _find(targets, _POS_EMBED_NAMES, lambda v: v.ndim >= 2)
    visual_only = any(k.startswith(_VISUAL_PREFIX) for k in state_dict)
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not value.is_floating_point() or (visual_only and not key.startswith(_VISUAL_PREFIX)):
            continue
        if kernel_target is not None and _named(key, _KERNEL_NAMES) and value.ndim == 4:
            out[key] = resample_patch_kernel(value, kernel_target.shape[-2:], mode)
        elif pos_target is not None and _named(key, _POS_EMBED_NAMES):
            resized = _resize_to(value, pos_target, grid)
            if resized is not None:
                out[key] = resized
    return out


def _named(key: str, names: Sequence[str]) -> bool:
    return any(key == n or key.endswith("." + n) for n in names)


def _find(state: Dict[str, torch.Tensor], names, accept) -> Optional[torch.Tensor]:
    found = [v for k, v in state.items() if _named(k, names) and accept(v)]
    return found[0] if len(found) == 1 else None


def _resize_to(value: torch.Tensor, target: torch.Tensor, grid: Tuple[int, int]):
    """The position embedding ``value`` resized to ``target``'s grid, or None if unmatched."""
    if value.ndim != target.ndim:
        return None
    if value.ndim == 4:  # [1, h, w, C]
        old_grid, num_prefix = tuple(value.shape[1:3]), 0
        new_grid = tuple(target.shape[1:3])
    else:
        num_prefix = target.shape[-2] - grid[0] * grid[1]
        side = math.isqrt(max(value.shape[-2] - num_prefix, 0))
        if num_prefix < 0 or side * side != value.shape[-2] - num_prefix:
            return None
        old_grid, new_grid = (side, side), tuple(grid)
    if old_grid == new_grid:
        return value.float()
    return resize_pos_embed(value, old_grid, new_grid, num_prefix)
