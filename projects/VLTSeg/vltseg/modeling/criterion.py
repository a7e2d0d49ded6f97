"""Mask2Former's set criterion: classification and point-sampled mask losses of matched queries."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from .matcher import HungarianMatcher
from .point_sampling import point_sample, uncertain_point_coords_with_randomness

__all__ = ["SetCriterion", "build_criterion", "sigmoid_ce_loss", "dice_loss"]


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """
    Binary cross-entropy with logits, averaged over points, summed over masks / num_masks.

    Args:
        inputs (Tensor): [n, P] logits; targets (Tensor): [n, P] in [0, 1].
        num_masks (float): normalizer (the average number of masks per process).
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """
    Dice loss (with +1 smoothing), summed over masks / num_masks.

    Args:
        inputs (Tensor): [n, P] logits; targets (Tensor): [n, P] in [0, 1].
        num_masks (float): normalizer.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _matched_target_masks(targets: List[Dict[str, Tensor]], indices, like: Tensor) -> Tensor:
    """Matched ground-truth masks of all images, zero-padded (bottom/right) to a common size."""
    selected = [t["masks"][j] for t, (_, j) in zip(targets, indices)]
    height = max(m.shape[-2] for m in selected)
    width = max(m.shape[-1] for m in selected)
    padded = [
        F.pad(m.to(like), (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in selected
    ]
    return torch.cat(padded, 0)


class SetCriterion(nn.Module):
    """
    Mask2Former's losses. The matcher assigns queries to ground-truth masks; then
      * "labels": cross-entropy of every query's class (unmatched queries: "no object",
        weighted by ``eos_coef``), key "loss_ce";
      * "masks": binary cross-entropy and dice of the matched masks on ``num_points`` points
        per mask, most of them (``importance_sample_ratio``) the most uncertain of
        ``oversample_ratio * num_points`` random candidates; keys "loss_mask", "loss_dice".
    Mask losses are normalized by the number of ground-truth masks averaged over all processes.
    With "aux_outputs" in the outputs, every intermediate prediction is matched and scored
    too (keys with suffix "_{i}").

    The returned losses are unweighted; ``weight_dict`` holds the weight of every key.
    """

    @configurable
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: K, the number of classes without "no object".
            matcher: callable(outputs, targets) -> list of (query indices, target indices).
            weight_dict: loss key -> weight (applied by the model, not here).
            eos_coef: classification weight of the "no object" class.
            losses: a subset of ("labels", "masks").
            num_points: points per mask for the mask losses.
            oversample_ratio: candidate points per kept point (>= 1).
            importance_sample_ratio: fraction of points chosen by uncertainty.
        """
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; available: 'labels', 'masks'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # A buffer (official name) so that it follows the model's device and official
        # checkpoints' "criterion.empty_weight" loads.
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        base = {
            "loss_ce": mf.CLASS_WEIGHT,
            "loss_mask": mf.MASK_WEIGHT,
            "loss_dice": mf.DICE_WEIGHT,
        }
        weight_dict = dict(base)
        if mf.DEEP_SUPERVISION:
            # DEC_LAYERS - 1 auxiliary predictions: the initial queries and all layers but the last.
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": weight_dict,
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ["labels", "masks"],
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = self._query_index(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes[batch_idx, query_idx] = matched.to(logits.device, torch.int64)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, Tensor]:
        batch_idx, query_idx = self._query_index(indices)
        pred = outputs["pred_masks"][batch_idx, query_idx][:, None]  # [n, 1, H, W]
        if pred.shape[0] == 0:
            # No ground truth in the batch: zero losses that still reach every prediction, so
            # that all processes run the same backward.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt = _matched_target_masks(targets, indices, pred)[:, None]  # [n, 1, H', W']
        with torch.no_grad():
            points = uncertain_point_coords_with_randomness(
                pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(tgt, points)[:, 0]
        point_logits = point_sample(pred, points)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _query_index(indices) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx, query_idx

    def _num_masks(self, targets, device) -> float:
        """Ground-truth masks per process, averaged over all processes (at least 1)."""
        num_masks = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1).item()

    def _losses_for(self, outputs, targets, num_masks) -> Dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            losses.update(self.loss_labels(outputs, targets, indices, num_masks))
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """
        Args:
            outputs (dict): "pred_logits" [B, Q, K + 1], "pred_masks" [B, Q, H, W] and
                optionally "aux_outputs" (list of dicts with the same keys).
            targets (list[dict]): per image, "labels" int64 [N] and "masks" [N, H', W'] (any
                dtype, values in [0, 1]), covering the same (padded) image as the predictions.

        Returns:
            dict[str, Tensor]: unweighted scalar losses: "loss_ce", "loss_mask", "loss_dice",
            and "<key>_{i}" for the i-th auxiliary output.
        """
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self._num_masks(targets, main["pred_logits"].device)
        losses = self._losses_for(main, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses_for(aux, targets, num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses


def build_criterion(cfg) -> SetCriterion:
    """The matcher + criterion of ``cfg.MODEL.MASK_FORMER`` (with deep-supervision weights)."""
    return SetCriterion(cfg)
