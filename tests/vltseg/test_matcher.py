"""Hungarian matcher: optimal assignments on hand-made cases, pairwise costs, edge cases."""
import pytest
import torch
import torch.nn.functional as F

from vltseg.modeling import HungarianMatcher
from vltseg.modeling.matcher import pairwise_dice, pairwise_sigmoid_ce

from .tiny_head import tiny_cfg


def _random_masks(n, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Blocky masks (upsampled noise) so that every mask covers a decent area.
    coarse = torch.rand(n, 1, h // 4, w // 4, generator=g) > 0.5
    return F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0]


def _as_dict(indices):
    return [dict(zip(i.tolist(), j.tolist())) for i, j in indices]


def test_predictions_equal_to_permuted_targets_are_matched_to_them():
    num_classes, Q = 4, 6
    tgt_masks = _random_masks(3)
    labels = torch.tensor([2, 0, 3])
    # Queries 4, 1 and 5 predict targets 0, 1 and 2; the others predict junk.
    owner = {4: 0, 1: 1, 5: 2}
    logits = torch.zeros(1, Q, num_classes + 1)
    masks = torch.randn(1, Q, 16, 24)
    for q, t in owner.items():
        logits[0, q, labels[t]] = 8.0
        masks[0, q] = (tgt_masks[t] * 2 - 1) * 10.0
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=400)
    outputs = {"pred_logits": logits, "pred_masks": masks}
    ((i, j),) = matcher(outputs, [{"labels": labels, "masks": tgt_masks}])
    assert i.dtype == j.dtype == torch.int64
    assert _as_dict([(i, j)]) == [owner]


def test_masks_decide_when_classes_tie():
    # Same class for all targets: only the mask costs can tell them apart.
    tgt_masks = _random_masks(2, seed=3)
    logits = torch.zeros(1, 2, 3)
    masks = torch.stack([(tgt_masks[1] * 2 - 1) * 10, (tgt_masks[0] * 2 - 1) * 10])[None]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=400)
    out = matcher(
        {"pred_logits": logits, "pred_masks": masks},
        [{"labels": torch.tensor([1, 1]), "masks": tgt_masks}],
    )
    assert _as_dict(out) == [{0: 1, 1: 0}]


def test_class_cost_alone_and_batches():
    logits = torch.full((2, 3, 4), -5.0)
    logits[0, 0, 1] = logits[0, 2, 0] = 5.0
    logits[1, 1, 2] = 5.0
    masks = torch.zeros(2, 3, 8, 8)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 8, 8)},
        {"labels": torch.tensor([2]), "masks": torch.zeros(1, 8, 8)},
    ]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    out = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
    assert _as_dict(out) == [{2: 0, 0: 1}, {1: 0}]


def test_image_without_targets_gets_no_match():
    matcher = HungarianMatcher(num_points=16)
    out = matcher(
        {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 8, 8)},
        [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}],
    )
    assert [len(i) for i, _ in out] == [0] and [len(j) for _, j in out] == [0]


def test_pairwise_costs_equal_the_losses_of_each_pair():
    inputs = torch.randn(4, 50)
    targets = (torch.rand(3, 50) > 0.5).float()
    ce = pairwise_sigmoid_ce(inputs, targets)
    dice = pairwise_dice(inputs, targets)
    for a in range(4):
        for b in range(3):
            expected_ce = F.binary_cross_entropy_with_logits(inputs[a], targets[b])
            p = inputs[a].sigmoid()
            expected_dice = 1 - (2 * (p * targets[b]).sum() + 1) / (p.sum() + targets[b].sum() + 1)
            torch.testing.assert_close(ce[a, b], expected_ce)
            torch.testing.assert_close(dice[a, b], expected_dice)


def test_non_finite_predictions_raise():
    logits = torch.randn(1, 2, 3)
    logits[0, 0, 0] = float("nan")
    matcher = HungarianMatcher(num_points=16)
    with pytest.raises(FloatingPointError, match="not finite"):
        matcher(
            {"pred_logits": logits, "pred_masks": torch.randn(1, 2, 8, 8)},
            [{"labels": torch.tensor([0]), "masks": torch.ones(1, 8, 8)}],
        )


def test_from_config_and_argument_checks():
    matcher = HungarianMatcher(tiny_cfg())
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert matcher.num_points == 256
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=0)
