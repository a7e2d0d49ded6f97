"""Point sampling of mask logits (PointRend) as Mask2Former's matcher and losses use it.

Detectron2 ships the same helpers in ``detectron2.projects.point_rend``, but that package
imports OpenCV at import time, which VLT does not depend on.
"""
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "point_sample",
    "uncertain_point_coords_with_randomness",
    "select_uncertain_points",
]


def point_sample(input: Tensor, point_coords: Tensor) -> Tensor:
    """
    Bilinearly sample ``input`` at normalized points (zeros outside, align_corners=False).

    Args:
        input (Tensor): [N, C, H, W].
        point_coords (Tensor): [N, P, 2], (x, y) in [0, 1] x [0, 1].

    Returns:
        Tensor: [N, C, P].
    """
    grid = 2.0 * point_coords[:, :, None, :] - 1.0
    return F.grid_sample(input, grid, mode="bilinear", align_corners=False)[..., 0]


def uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Tensor:
    """
    PointRend's importance sampling: draw ``oversample_ratio * num_points`` uniform candidates,
    keep the ``importance_sample_ratio * num_points`` most uncertain ones (uncertainty = -|logit|,
    highest at the mask boundary), fill up with uniform points.

    Args:
        coarse_logits (Tensor): [N, 1, H, W] mask logits.
        num_points (int): P, points per mask.
        oversample_ratio (float): >= 1.
        importance_sample_ratio (float): in [0, 1].

    Returns:
        Tensor: [N, P, 2] point coordinates in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
            f"{oversample_ratio} and {importance_sample_ratio}"
        )
    N = coarse_logits.shape[0]
    candidates = torch.rand(N, int(num_points * oversample_ratio), 2, device=coarse_logits.device)
    num_uncertain = int(importance_sample_ratio * num_points)
    uniform = torch.rand(N, num_points - num_uncertain, 2, device=coarse_logits.device)
    return select_uncertain_points(coarse_logits, candidates, uniform, num_uncertain)


def select_uncertain_points(
    coarse_logits: Tensor, candidates: Tensor, uniform: Tensor, num_uncertain: int
) -> Tensor:
    """
    The selection step of :func:`uncertain_point_coords_with_randomness`, the random points given
    (so that they can be drawn earlier, in the same order): the ``num_uncertain`` most uncertain
    ``candidates``, then the ``uniform`` points.

    Args:
        coarse_logits (Tensor): [N, 1, H, W] mask logits.
        candidates (Tensor): [N, C, 2] uniform candidates in [0, 1].
        uniform (Tensor): [N, U, 2] points appended as they are.
        num_uncertain (int): candidates kept, <= C.

    Returns:
        Tensor: [N, num_uncertain + U, 2].
    """
    scores = -point_sample(coarse_logits, candidates)[:, 0].abs()  # [N, C]
    idx = torch.topk(scores, k=num_uncertain, dim=1)[1]
    points = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
    return torch.cat([points, uniform], dim=1)
