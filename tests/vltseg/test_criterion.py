"""The set criterion: loss keys with deep supervision, perfect < wrong predictions, gradients,
no-object weight, images without ground truth, num_masks averaged over processes."""
import json

import pytest
import torch
from detectron2.engine import launch

from vltseg.modeling import HungarianMatcher, SetCriterion, build_criterion

from .tiny_head import tiny_cfg

NUM_CLASSES, Q, H, W = 4, 5, 16, 24


def _criterion(num_points=200):
    return SetCriterion(
        NUM_CLASSES,
        HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points),
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=0.1,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def _targets():
    masks = torch.zeros(3, H, W)
    masks[0, :8], masks[1, 8:, :12], masks[2, 8:, 12:] = 1, 1, 1
    second = torch.zeros(1, H, W, dtype=torch.bool)
    second[0, 4:12, 6:18] = True
    return [
        {"labels": torch.tensor([1, 3, 0]), "masks": masks},
        {"labels": torch.tensor([2]), "masks": second},
    ]


def _prediction(targets, wrong=False):
    """Queries 0..N-1 predict the targets (or their complements with shifted classes)."""
    logits = torch.full((len(targets), Q, NUM_CLASSES + 1), -6.0)
    logits[..., -1] = 6.0  # unmatched queries: "no object"
    masks = torch.full((len(targets), Q, H, W), -8.0)
    for b, t in enumerate(targets):
        for q, (label, mask) in enumerate(zip(t["labels"], t["masks"].float())):
            logits[b, q, -1] = -6.0
            logits[b, q, (label + int(wrong)) % NUM_CLASSES] = 6.0
            masks[b, q] = ((1 - mask) if wrong else mask) * 16.0 - 8.0
    return {"pred_logits": logits.requires_grad_(), "pred_masks": masks.requires_grad_()}


def _with_aux(outputs, n=2):
    aux = [{k: v.detach().clone().requires_grad_() for k, v in outputs.items()} for _ in range(n)]
    return {**outputs, "aux_outputs": aux}


def test_loss_keys_include_every_aux_output():
    losses = _criterion()(_with_aux(_prediction(_targets())), _targets())
    base = {"loss_ce", "loss_mask", "loss_dice"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_perfect_prediction_scores_lower_than_wrong_one():
    criterion = _criterion()
    targets = _targets()
    perfect = criterion(_prediction(targets), targets)
    wrong = criterion(_prediction(targets, wrong=True), targets)
    for key in ("loss_ce", "loss_mask", "loss_dice"):
        # Points on mask borders keep the perfect mask losses above zero (interpolated labels).
        assert perfect[key] < 0.5 * wrong[key], key


def test_gradients_reach_predictions_of_every_layer():
    outputs = _with_aux(_prediction(_targets(), wrong=True))
    sum(_criterion()(outputs, _targets()).values()).backward()
    for out in [outputs] + outputs["aux_outputs"]:
        for key in ("pred_logits", "pred_masks"):
            assert out[key].grad is not None and torch.count_nonzero(out[key].grad) > 0


def test_no_object_weight():
    criterion = _criterion()
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1, 1, 1, 0.1]))
    # With no targets, loss_ce is the plain cross-entropy towards "no object" (the weights
    # cancel in the weighted mean), and the mask losses are zero but connected to the graph.
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, H, W)}]
    outputs = {"pred_logits": torch.randn(1, Q, 5, requires_grad=True)}
    outputs["pred_masks"] = torch.randn(1, Q, H, W, requires_grad=True)
    losses = criterion(outputs, empty)
    expected = torch.nn.functional.cross_entropy(outputs["pred_logits"][0], torch.full((Q,), 4))
    torch.testing.assert_close(losses["loss_ce"], expected)
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_mask_losses_are_normalized_by_the_number_of_masks():
    # Logits 0 everywhere cost log(2) per point whatever the label: summed over the 4 matched
    # masks and divided by num_masks = 4, loss_mask is exactly log(2).
    outputs = {"pred_logits": torch.randn(2, Q, 5), "pred_masks": torch.zeros(2, Q, H, W)}
    losses = _criterion()(outputs, _targets())
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(0.6931472))


def test_build_criterion_from_config():
    cfg = tiny_cfg()
    criterion = build_criterion(cfg)
    assert isinstance(criterion.matcher, HungarianMatcher)
    assert criterion.num_points == 256 and criterion.eos_coef == 0.1
    assert (criterion.oversample_ratio, criterion.importance_sample_ratio) == (3.0, 0.75)
    # DEC_LAYERS = 4 -> 3 auxiliary predictions.
    assert len(criterion.weight_dict) == 3 * 4
    assert criterion.weight_dict["loss_dice_2"] == 5.0 and criterion.weight_dict["loss_ce"] == 2.0
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert set(build_criterion(cfg).weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(4, None, {}, 0.1, ["boxes"], 10, 3.0, 0.75)


def _count_masks_worker(out_dir):
    from detectron2.utils import comm

    rank = comm.get_rank()
    # rank 0: 1 mask, rank 1: 3 masks; several processes: a tensor, never read on the host
    value = _criterion()._num_masks(1 + 2 * rank, torch.device("cpu"))
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(value.item(), f)


@pytest.mark.slow
def test_num_masks_is_averaged_over_processes(tmp_path):
    launch(_count_masks_worker, 2, dist_url="auto", args=(str(tmp_path),))
    values = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert values == [2.0, 2.0]


def _reference_losses(criterion, outputs, targets):
    """Official Mask2Former's per-prediction loop, written out: match, then the class loss and
    the point-sampled mask losses of that prediction, drawing the random points as it goes."""
    from torch.nn import functional as F

    from vltseg.modeling import point_sample, uncertain_point_coords_with_randomness

    layers = [{k: outputs[k] for k in ("pred_logits", "pred_masks")}] + outputs["aux_outputs"]
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    losses = {}
    for i, out in enumerate(layers):
        suffix = "" if i == 0 else f"_{i - 1}"
        indices = criterion.matcher(out, targets)
        classes = torch.full(out["pred_logits"].shape[:2], NUM_CLASSES, dtype=torch.int64)
        for b, (src, tgt) in enumerate(indices):
            classes[b, src] = targets[b]["labels"][tgt]
        losses[f"loss_ce{suffix}"] = F.cross_entropy(
            out["pred_logits"].transpose(1, 2), classes, criterion.empty_weight
        )
        pred = torch.cat([out["pred_masks"][b][src] for b, (src, _) in enumerate(indices)])
        tgt = torch.cat([t["masks"][j].float() for t, (_, j) in zip(targets, indices)])
        points = uncertain_point_coords_with_randomness(pred[:, None], 200, 3.0, 0.75)
        labels = point_sample(tgt[:, None], points)[:, 0]
        logits = point_sample(pred[:, None], points)[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        probs = logits.sigmoid()
        dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + labels.sum(-1) + 1)
        losses[f"loss_mask{suffix}"] = bce.sum() / num_masks
        losses[f"loss_dice{suffix}"] = dice.sum() / num_masks
    return losses


def test_batched_losses_equal_the_official_per_prediction_loop():
    # All predictions are matched and scored together (one cost transfer); values and random
    # draws must equal the official loop's, with an image without targets in the batch.
    g = torch.Generator().manual_seed(3)
    targets = _targets()
    targets.insert(1, {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, H, W)})
    layer = lambda: {  # noqa: E731
        "pred_logits": torch.randn(3, Q, NUM_CLASSES + 1, generator=g),
        "pred_masks": torch.randn(3, Q, H, W, generator=g) * 4,
    }
    outputs = {**layer(), "aux_outputs": [layer(), layer()]}
    criterion = _criterion()
    torch.manual_seed(11)
    ours = criterion(outputs, targets)
    torch.manual_seed(11)
    reference = _reference_losses(criterion, outputs, targets)
    assert sorted(ours) == sorted(reference) and len(ours) == 9
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)
