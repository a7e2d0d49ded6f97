"""
Multi-scale deformable attention from plain ``grid_sample`` calls: the path ONNX export takes.

:func:`vltseg.modeling.ms_deform_attn` switches to it while ``torch.onnx.export`` traces the
model (``torch.onnx.is_in_onnx_export()``); its custom autograd functions (embedding_bag on CPU,
Triton on CUDA) have no ONNX form, ``grid_sample`` exports as ``GridSample`` (opset >= 16).
The formulation is official Mask2Former's PyTorch one (``ms_deform_attn_core_pytorch``): one
``grid_sample`` per level with the heads folded into the batch, then one weighted sum. Same
semantics: ``align_corners=False``, zeros outside each level.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ms_deform_attn_grid_sample"]


def ms_deform_attn_grid_sample(
    value: Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    level_start_index: Sequence[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """
    Args:
        value (Tensor): [B, S, nH, dH].
        spatial_shapes: (H, W) of every level, as Python ints (a tensor works too; under
            tracing its values become constants).
        level_start_index: start of every level along S (ints or a tensor).
        sampling_locations (Tensor): [B, Lq, nH, L, nP, 2], (x, y) in [0, 1] per level.
        attention_weights (Tensor): [B, Lq, nH, L, nP].

    Returns:
        Tensor: [B, Lq, nH * dH], as :func:`vltseg.modeling.ms_deform_attn`.
    """
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    starts = [int(s) for s in level_start_index]
    grids = 2 * sampling_locations - 1
    samples = []
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        level = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B * nH, Lq, nP, 2]
        samples.append(
            F.grid_sample(level, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B * nH, dH, Lq, nP]
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # [B * nH, dH, Lq]
    return out.view(B, M * D, Lq).transpose(1, 2)
