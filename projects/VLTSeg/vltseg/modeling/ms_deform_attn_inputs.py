"""Argument checks shared by the implementations of multi-scale deformable attention."""
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["ShapesLike", "check_inputs", "level_shapes"]

ShapesLike = Union[Tensor, Sequence[Sequence[int]]]


def level_shapes(spatial_shapes: ShapesLike) -> List[Tuple[int, int]]:
    """
    The (H, W) of every level as Python ints. Python ints pass through without touching a device;
    a CUDA tensor is read back (one synchronization), so callers on the training path pass ints.

    Args:
        spatial_shapes (Tensor or sequence): [L, 2], (H, W) per level.
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _level_layout(
    spatial_shapes: ShapesLike, level_start_index: Union[Tensor, Sequence[int]], num_levels: int
) -> Tuple[List[Tuple[int, int]], List[int]]:
    shapes = level_shapes(spatial_shapes)
    starts = [int(s) for s in torch.as_tensor(level_start_index).reshape(-1).tolist()]
    if len(shapes) != num_levels or len(starts) != num_levels:
        raise ValueError(
            f"spatial_shapes ({len(shapes)} levels) and level_start_index ({len(starts)} levels) "
            f"must describe the {num_levels} levels of sampling_locations"
        )
    return shapes, starts


def check_inputs(
    value: Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: Union[Tensor, Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tuple[List[Tuple[int, int]], List[int]]:
    """
    Check the shapes of :func:`ms_deform_attn`'s arguments (any dtypes).

    Returns:
        The (H, W) of every level and its start along S, as Python ints.
    """
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, nH, dH], got shape {tuple(value.shape)}")
    B, S, M, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [B, Lq, nH, L, nP, 2], got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} must have the shape of "
            f"sampling_locations without its last dimension {tuple(sampling_locations.shape[:-1])}"
        )
    if sampling_locations.shape[0] != B or sampling_locations.shape[2] != M:
        raise ValueError(
            f"value {tuple(value.shape)} and sampling_locations "
            f"{tuple(sampling_locations.shape)} disagree on batch size or number of heads"
        )
    shapes, starts = _level_layout(spatial_shapes, level_start_index, sampling_locations.shape[3])
    for (h, w), s in zip(shapes, starts):
        if s < 0 or s + h * w > S:
            raise ValueError(
                f"level of shape {(h, w)} starting at {s} does not fit into value with S={S}"
            )
    return shapes, starts
