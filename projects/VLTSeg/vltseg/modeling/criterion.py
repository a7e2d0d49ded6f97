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


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Binary cross-entropy with logits of each mask, averaged over its points.

    Args:
        inputs (Tensor): [n, P] logits; targets (Tensor): [n, P] in [0, 1].

    Returns:
        Tensor: [n]; Mask2Former's loss is their sum over the masks / num_masks.
    """
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1)


def dice_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """
    Dice loss (with +1 smoothing) of each mask.

    Args:
        inputs (Tensor): [n, P] logits; targets (Tensor): [n, P] in [0, 1].

    Returns:
        Tensor: [n]; Mask2Former's loss is their sum over the masks / num_masks.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


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

    def loss_labels(self, layers, targets: PaddedTargets, index: Tensor) -> Tensor:
        """
        Cross-entropy of every query's class (weighted mean, "no object" weighted by
        ``eos_coef``), all L predictions at once.

        Args:
            layers (list[dict]): the L predictions ("pred_logits" [B, Q, K + 1]).
            targets (PaddedTargets): the batch's targets.
            index (Tensor): [L, 3, n] from :meth:`_matched_index`.

        Returns:
            Tensor: [L], one loss per prediction.
        """
        logits = torch.stack([out["pred_logits"] for out in layers]).float()  # [L, B, Q, K+1]
        L, B, Q = logits.shape[:3]
        target_classes = torch.full(
            (L, B, Q), self.num_classes, dtype=torch.int64, device=logits.device
        )
        layer_idx = torch.arange(L, device=logits.device)[:, None].expand_as(index[:, 0])
        target_classes[layer_idx, index[:, 0], index[:, 1]] = targets.flat_labels[index[:, 2]]
        nll = F.cross_entropy(
            logits.flatten(0, 1).transpose(1, 2),
            target_classes.flatten(0, 1),
            self.empty_weight,
            reduction="none",
        )  # [L * B, Q], already weighted by the class weights
        # F.cross_entropy's weighted mean, per prediction.
        weights = self.empty_weight[target_classes].view(L, -1).sum(1)
        return nll.view(L, -1).sum(1) / weights

    def loss_masks(
        self, layers, targets: PaddedTargets, index: Tensor, num_masks, candidates, uniform
    ) -> Tuple[Tensor, Tensor]:
        """
        BCE and dice of the matched masks at importance-sampled points, all L predictions at
        once: the matched predicted masks are gathered per prediction and sampled together; the
        ground-truth masks are sampled in place (each target at the points of every prediction
        it is matched in), without copying them per prediction.

        Args:
            layers (list[dict]): the L predictions ("pred_masks" [B, Q, H, W]).
            targets (PaddedTargets): the batch's targets.
            index (Tensor): [L, 3, n] from :meth:`_matched_index`.
            num_masks (float or Tensor): the normalizer.
            candidates (list[Tensor]): per prediction [n, C, 2], the pre-drawn candidates.
            uniform (list[Tensor]): per prediction [n, U, 2], the pre-drawn uniform points.

        Returns:
            tuple[Tensor, Tensor]: [L] BCE and [L] dice losses.
        """
        L, n = index.shape[0], index.shape[2]
        if n == 0:
            # No ground truth in the batch: zero losses that still reach every prediction, so
            # that all processes run the same backward.
            zero = torch.stack([out["pred_masks"].sum() * 0.0 for out in layers])
            return zero, zero
        pred = torch.cat(
            [out["pred_masks"][index[i, 0], index[i, 1]] for i, out in enumerate(layers)]
        )[:, None]  # [L * n, 1, H, W]
        P = self.num_points
        with torch.no_grad():
            num_uncertain = int(self.importance_sample_ratio * P)
            points = select_uncertain_points(
                pred, torch.cat(candidates), torch.cat(uniform), num_uncertain
            )  # [L * n, P, 2]
            # Target t matched in prediction i is sampled at slot i of its row.
            slots = torch.zeros(targets.total, L, P, 2, device=pred.device)
            layer_idx = torch.arange(L, device=pred.device)[:, None].expand(L, n)
            slots[index[:, 2], layer_idx] = points.view(L, n, P, 2)
            sampled = point_sample(targets.masks, slots.view(targets.total, L * P, 2))
            point_labels = sampled.view(targets.total, L, P)[index[:, 2], layer_idx]
            point_labels = point_labels.view(L * n, P).to(pred.dtype)
        point_logits = point_sample(pred, points)[:, 0]  # [L * n, P]
        bce = sigmoid_ce_loss(point_logits, point_labels).view(L, n).sum(1) / num_masks
        dice = dice_loss(point_logits, point_labels).view(L, n).sum(1) / num_masks
        return bce, dice

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

        names = [""] + [f"_{i}" for i in range(len(layers) - 1)]
        losses = {}
        if "labels" in self.losses:
            losses.update(
                {f"loss_ce{s}": v for s, v in zip(names, self.loss_labels(layers, padded, index))}
            )
        if "masks" in self.losses:
            bce, dice = self.loss_masks(
                layers, padded, index, num_masks, [d[1] for d in draws], [d[2] for d in draws]
            )
            losses.update({f"loss_mask{s}": v for s, v in zip(names, bce)})
            losses.update({f"loss_dice{s}": v for s, v in zip(names, dice)})
        return losses


def build_criterion(cfg) -> SetCriterion:
    """The matcher + criterion of ``cfg.MODEL.MASK_FORMER`` (with deep-supervision weights)."""
    return SetCriterion(cfg)
