"""Mask2Former's set criterion: classification and point-sampled mask losses of matched queries."""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from .matcher import HungarianMatcher, PaddedTargets, to_device_async
from .point_sampling import point_sample, select_uncertain_points

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
        matcher: HungarianMatcher,
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
            matcher: the Hungarian matcher (its draw_points / cost_matrices / assign are used
                to match all predictions with one device-to-host transfer).
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

    def _draws(self, batch_size: int, num_matched: int, device) -> Tuple[Tensor, Tensor, Tensor]:
        """One prediction's random points, in official Mask2Former's order: the matcher's per
        image, then the mask loss's candidates and uniform points (None without matches)."""
        points = self.matcher.draw_points(batch_size, device)
        if "masks" not in self.losses or num_matched == 0:
            return points, None, None
        num_candidates = int(self.num_points * self.oversample_ratio)
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        candidates = torch.rand(num_matched, num_candidates, 2, device=device)
        uniform = torch.rand(num_matched, self.num_points - num_uncertain, 2, device=device)
        return points, candidates, uniform

    def _matched_index(self, all_indices, counts: List[int], device) -> Tensor:
        """int64 [L, 3, n] on ``device``: per layer the image, query and flat target index
        (into the concatenated targets) of every match; one host-to-device copy."""
        offsets = [sum(counts[:b]) for b in range(len(counts))]
        rows = []
        for indices in all_indices:
            batch = [torch.full_like(src, b) for b, (src, _) in enumerate(indices)]
            target = [tgt + offsets[b] for b, (_, tgt) in enumerate(indices)]
            query = [src for src, _ in indices]
            rows.append(torch.stack([torch.cat(batch), torch.cat(query), torch.cat(target)]))
        return to_device_async(torch.stack(rows), device)

    def loss_labels(self, outputs, targets: PaddedTargets, index: Tensor) -> Dict[str, Tensor]:
        """Cross-entropy of every query's class; ``index`` [3, n] from :meth:`_matched_index`."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[index[0], index[1]] = targets.flat_labels[index[2]]
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(
        self, outputs, targets: PaddedTargets, index: Tensor, num_masks, candidates, uniform
    ) -> Dict[str, Tensor]:
        """BCE and dice of the matched masks at importance-sampled points."""
        if index.shape[1] == 0:
            # No ground truth in the batch: zero losses that still reach every prediction, so
            # that all processes run the same backward.
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        pred = outputs["pred_masks"][index[0], index[1]][:, None]  # [n, 1, H, W]
        tgt = targets.masks[index[2]]  # [n, 1, H', W']
        with torch.no_grad():
            num_uncertain = int(self.importance_sample_ratio * self.num_points)
            points = select_uncertain_points(pred, candidates, uniform, num_uncertain)
            point_labels = point_sample(tgt.to(pred), points)[:, 0]
        point_logits = point_sample(pred, points)[:, 0]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _num_masks(num_targets: int, device):
        """Ground-truth masks per process, averaged over all processes (at least 1): a Python
        float on one process, a device tensor (never read on the host) on several."""
        world_size = comm.get_world_size()
        if world_size == 1:
            return max(float(num_targets), 1.0)
        num_masks = torch.full((), float(num_targets), device=device)  # 0-d: scalar losses
        dist.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1)

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """
        All predictions (the final and every auxiliary one) are matched together, so that
        their cost matrices reach the CPU in one transfer; the random points are drawn first, in
        official Mask2Former's order (per prediction: the matcher's, then the mask loss's).

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
        layers = [main] + list(outputs.get("aux_outputs", []))
        logits = main["pred_logits"]
        B, Q, device = logits.shape[0], logits.shape[1], logits.device
        if len(targets) != B:
            raise ValueError(f"{len(targets)} targets for a batch of {B} predictions")
        padded = PaddedTargets(targets, device)
        num_masks = self._num_masks(padded.total, device)
        num_matched = sum(min(Q, n) for n in padded.counts)
        draws = [self._draws(B, num_matched, device) for _ in layers]
        if padded.total:
            costs = torch.stack(
                [self.matcher.cost_matrices(out, padded, d[0]) for out, d in zip(layers, draws)]
            )
            all_indices = self.matcher.assign(costs, padded.counts)
        else:
            empty = torch.zeros(0, dtype=torch.int64)
            all_indices = [[(empty, empty)] * B for _ in layers]
        index = self._matched_index(all_indices, padded.counts, device)

        losses = {}
        for i, (out, (_, candidates, uniform)) in enumerate(zip(layers, draws)):
            layer = {}
            if "labels" in self.losses:
                layer.update(self.loss_labels(out, padded, index[i]))
            if "masks" in self.losses:
                layer.update(
                    self.loss_masks(out, padded, index[i], num_masks, candidates, uniform)
                )
            suffix = "" if i == 0 else f"_{i - 1}"
            losses.update({f"{k}{suffix}": v for k, v in layer.items()})
        return losses


def build_criterion(cfg) -> SetCriterion:
    """The matcher + criterion of ``cfg.MODEL.MASK_FORMER`` (with deep-supervision weights)."""
    return SetCriterion(cfg)
