"""Hungarian matching between Mask2Former's predictions and the ground-truth masks.

Costs of all images (and, through :meth:`HungarianMatcher.assign`, of all decoder layers) are
computed batched on the device and reach the CPU in one transfer for scipy's
``linear_sum_assignment``: the only host-device synchronization of the matching.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from .point_sampling import point_sample

__all__ = [
    "HungarianMatcher",
    "PaddedTargets",
    "pairwise_sigmoid_ce",
    "pairwise_dice",
    "to_device_async",
]


def to_device_async(tensor: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on ``device``; to CUDA through pinned memory, so the copy does not make the
    host wait for the device."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Mean binary cross-entropy (with logits) of every prediction against every target.

    Args:
        inputs (Tensor): [..., Q, P] logits; targets (Tensor): [..., N, P] in [0, 1].

    Returns:
        Tensor: [..., Q, N].
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): linear in t, so one matmul each.
    pos = F.softplus(-inputs)
    neg = F.softplus(inputs)
    tgt = targets.transpose(-1, -2)
    return (pos @ tgt + neg @ (1 - tgt)) / inputs.shape[-1]


def pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Dice loss (with +1 smoothing) of every prediction against every target.

    Args:
        inputs (Tensor): [..., Q, P] logits; targets (Tensor): [..., N, P] in [0, 1].

    Returns:
        Tensor: [..., Q, N].
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class PaddedTargets:
    """
    The targets of a batch laid out for batched work, built without reading device values.

    Attributes:
        counts (list[int]): N_b, targets per image.
        labels (Tensor): int64 [B, N_max], zero-padded.
        flat_labels (Tensor): int64 [sum N_b], all images' labels in order.
        masks (Tensor): float [sum N_b, 1, H, W], all images' masks (zero-padded bottom/right
            to a common size).
        owner (Tensor): int64 [sum N_b], the image of each target.
    """

    def __init__(self, targets: Sequence[Dict[str, Tensor]], device: torch.device):
        self.counts = [int(t["labels"].shape[0]) for t in targets]
        labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
        self.labels = pad_sequence(labels, batch_first=True)
        self.flat_labels = torch.cat(labels)
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        masks = [
            F.pad(
                t["masks"].to(device=device, dtype=torch.float32),
                (0, width - t["masks"].shape[-1], 0, height - t["masks"].shape[-2]),
            )
            for t in targets
        ]
        self.masks = torch.cat(masks)[:, None]
        # Filled on the device: no host-to-device copy.
        fills = [torch.full((n,), i, device=device) for i, n in enumerate(self.counts)]
        self.owner = torch.cat(fills).long()

    @property
    def total(self) -> int:
        return sum(self.counts)


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

    def draw_points(self, batch_size: int, device: torch.device) -> Tensor:
        """
        The matching points of every image, drawn as official Mask2Former draws them: one
        ``torch.rand(1, P, 2)`` per image in batch order, images without targets included, so
        that the random stream stays reproducible against the official code.

        Returns:
            Tensor: [B, P, 2] in [0, 1].
        """
        return torch.cat(
            [torch.rand(1, self.num_points, 2, device=device) for _ in range(batch_size)]
        )

    @torch.no_grad()
    def cost_matrices(
        self, outputs: Dict[str, Tensor], targets: PaddedTargets, points: Tensor
    ) -> Tensor:
        """
        Matching costs of every query against every (padded) target, all images at once.

        Args:
            outputs (dict): "pred_logits" [B, Q, K + 1] and "pred_masks" [B, Q, H, W].
            targets (PaddedTargets): the batch's targets.
            points (Tensor): [B, P, 2] from :meth:`draw_points`.

        Returns:
            Tensor: float32 [B, Q, N_max]; columns past an image's N_b are padding.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        B, Q = logits.shape[:2]
        n_max = max(targets.counts)
        # Costs in float32 even under autocast: the log-sigmoids and sums need the range.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = logits.float().softmax(-1)
            cost_class = -torch.gather(probs, 2, targets.labels[:, None].expand(B, Q, n_max))
            pred = point_sample(masks.float(), points)  # [B, Q, P]
            sampled = point_sample(targets.masks, points[targets.owner])[:, 0]  # [sum N, P]
            tgt = pad_sequence(sampled.split(targets.counts), batch_first=True)  # [B, N_max, P]
            return (
                self.cost_class * cost_class
                + self.cost_mask * pairwise_sigmoid_ce(pred, tgt)
                + self.cost_dice * pairwise_dice(pred, tgt)
            )

    @staticmethod
    def assign(costs: Tensor, counts: Sequence[int]) -> List[List[Tuple[Tensor, Tensor]]]:
        """
        Hungarian assignment of stacked cost matrices, with one device-to-host transfer.

        Args:
            costs (Tensor): [L, B, Q, N_max], e.g. from :meth:`cost_matrices` of L layers.
            counts (sequence[int]): N_b per image.

        Returns:
            list[list[tuple[Tensor, Tensor]]]: per layer and image, (query indices, target
            indices), int64 CPU tensors of length min(Q, N_b).
        """
        cost = costs.cpu().numpy()  # the single synchronization of the matching
        results = []
        for layer in cost:
            indices = []
            for b, n in enumerate(counts):
                block = layer[b, :, :n]
                if not np.isfinite(block).all():
                    raise FloatingPointError(
                        "HungarianMatcher: the matching cost has NaN or inf entries; the "
                        "predictions (pred_logits / pred_masks) are not finite"
                    )
                rows, cols = linear_sum_assignment(block)
                indices.append((torch.from_numpy(rows).long(), torch.from_numpy(cols).long()))
            results.append(indices)
        return results

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
        logits = outputs["pred_logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} predictions")
        points = self.draw_points(len(targets), logits.device)
        padded = PaddedTargets(targets, logits.device)
        if padded.total == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        costs = self.cost_matrices(outputs, padded, points)
        return self.assign(costs[None], padded.counts)[0]
