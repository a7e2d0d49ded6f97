"""Hungarian matching between Mask2Former's predictions and the ground-truth masks."""
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F

from .point_sampling import point_sample

__all__ = ["HungarianMatcher", "pairwise_sigmoid_ce", "pairwise_dice"]


def pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Mean binary cross-entropy (with logits) of every prediction against every target.

    Args:
        inputs (Tensor): [Q, P] logits at P points; targets (Tensor): [N, P] in [0, 1].

    Returns:
        Tensor: [Q, N].
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): linear in t, so one matmul each.
    pos = F.softplus(-inputs)
    neg = F.softplus(inputs)
    return (pos @ targets.t() + neg @ (1 - targets).t()) / inputs.shape[1]


def pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Dice loss (with +1 smoothing) of every prediction against every target.

    Args:
        inputs (Tensor): [Q, P] logits; targets (Tensor): [N, P] in [0, 1].

    Returns:
        Tensor: [Q, N].
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.t()
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of queries to ground-truth masks (Mask2Former): the cost is
    ``cost_class * (-p(class)) + cost_mask * BCE + cost_dice * dice``, with both mask costs
    computed on ``num_points`` points drawn uniformly per image (shared by all its masks),
    minimized with scipy's ``linear_sum_assignment``. Queries without a target are "no object".
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 112 * 112,
    ):
        """
        Args:
            cost_class: weight of the classification cost.
            cost_mask: weight of the mask binary cross-entropy cost.
            cost_dice: weight of the mask dice cost.
            num_points: points sampled per image for the mask costs.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher needs at least one non-zero cost weight")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """
        Args:
            outputs (dict): "pred_logits" [B, Q, K + 1] and "pred_masks" [B, Q, H, W].
            targets (list[dict]): per image, "labels" int64 [N] and "masks" [N, H', W'].

        Returns:
            list[tuple[Tensor, Tensor]]: per image, (query indices, target indices), int64
            tensors of length min(Q, N): query ``i[k]`` is matched to target ``j[k]``.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} predictions")
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            # Costs in float32 even under autocast: the log-sigmoids and sums need the range.
            with torch.autocast(device_type=logits.device.type, enabled=False):
                cost_class = -logits[b].float().softmax(-1)[:, labels]  # [Q, N]
                points = torch.rand(1, self.num_points, 2, device=masks.device)
                pred_masks = masks[b][:, None].float()
                pred = point_sample(pred_masks, points.expand(pred_masks.shape[0], -1, -1))
                tgt_masks = target["masks"].to(device=masks.device, dtype=torch.float32)
                tgt = point_sample(tgt_masks[:, None], points.expand(len(labels), -1, -1))
                pred, tgt = pred[:, 0], tgt[:, 0]
                cost = (
                    self.cost_class * cost_class
                    + self.cost_mask * pairwise_sigmoid_ce(pred, tgt)
                    + self.cost_dice * pairwise_dice(pred, tgt)
                )
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    "HungarianMatcher: the matching cost has NaN or inf entries; the predictions "
                    "(pred_logits / pred_masks) are not finite"
                )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
