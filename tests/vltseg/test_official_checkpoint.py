"""Parity with official Mask2Former (semantic head, criterion, matcher) on stored golden tensors.

``tests/golden/mask2former_tiny.pt`` holds the state dict of a tiny official model (official key
names: ``sem_seg_head.*``, ``criterion.empty_weight``), its inputs, its outputs and its losses and
matches, written by ``tests/golden/make_mask2former_golden.py`` from the official code (see that
script to regenerate it). Here the official weights go into VLT's head through Detectron2's
DetectionCheckpointer, as a user loads a model-zoo ``.pkl`` or a ``.pth``, and VLT must reproduce
the official numbers. The official code is not needed to run these tests.
"""
import collections
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from torch import nn

from tests.paths import CONFIGS
from vlt_common.config import add_vlt_common_config
from vltseg.config import add_vltseg_config
from vltseg.modeling import build_criterion

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "mask2former_tiny.pt")
# Outputs: the same float32 computation in another order (e.g. VLT's own deformable-attention
# sampling), so equal up to rounding: measured at most 1.7e-6 on values up to 4, while moving a
# single sampling-offset weight of the encoder by 1e-3 moves mask_features by 5.7e-5.
OUTPUT_ATOL = 1e-5
# Losses computed from the official predictions: same points, same matches, so only the
# summation order may differ.
LOSS_ATOL = 1e-6


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _cfg(golden):
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    add_vltseg_config(cfg)
    # VLTSeg's values of Detectron2's own SEM_SEG_HEAD keys (the Mask2Former head)
    cfg.merge_from_file(os.path.join(CONFIGS, "Base-VLTSeg.yaml"))
    for key, value in golden["config"].items():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"{GOLDEN}: config key {key} is not a VLTSeg config key")
        node[leaf] = type(node[leaf])(value)
    return cfg


class _HeadAndCriterion(nn.Module):
    """The part of a Mask2Former model that an official checkpoint fills besides the backbone:
    ``sem_seg_head`` and ``criterion`` (VLTSeg's meta-architecture uses these names)."""

    def __init__(self, golden, seed):
        super().__init__()
        torch.manual_seed(seed)
        cfg = _cfg(golden)
        shapes = {
            k: ShapeSpec(channels=golden["channels"][k], stride=golden["strides"][k])
            for k in golden["channels"]
        }
        self.sem_seg_head = build_sem_seg_head(cfg, shapes)
        self.criterion = build_criterion(cfg)


def _write_checkpoint(state, path, fmt):
    if fmt == "pkl":
        # Detectron2 model-zoo pickle: numpy arrays under "model", plus "__author__".
        payload = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Mask2Former"}
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        # A checkpoint written by the official training loop (DetectionCheckpointer.save).
        torch.save({"model": state, "iteration": 89999}, path)


def _load_official(golden, tmp_path, fmt):
    path = tmp_path / f"model_final.{fmt}"
    _write_checkpoint(golden["state_dict"], path, fmt)
    model = _HeadAndCriterion(golden, seed=1)
    extra = DetectionCheckpointer(model).load(str(path))
    assert "model" not in extra
    return model


@pytest.fixture(scope="module")
def vlt_model(golden, tmp_path_factory):
    """VLT's head with the official weights, loaded from a .pth."""
    return _load_official(golden, tmp_path_factory.mktemp("ckpt"), "pth")


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_every_official_key_lands(golden, tmp_path, fmt):
    official = golden["state_dict"]
    model = _load_official(golden, tmp_path, fmt)
    loaded = model.state_dict()
    missing = sorted(set(loaded) - set(official))
    unexpected = sorted(set(official) - set(loaded))
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"
    for key, value in official.items():
        # Every value, not just the names: a key filled by suffix matching into the wrong
        # module, or skipped for a shape mismatch, keeps VLT's own (different) initialization.
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def _predictions(out):
    return [out] + list(out["aux_outputs"])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_outputs_equal_the_official_ones(golden, vlt_model, training):
    head = vlt_model.sem_seg_head.train(training)
    expected = golden["outputs"]
    with torch.no_grad():
        mask_features, encoder_features, multi_scale = head.pixel_decoder(golden["features"])
        actual = head(golden["features"])
    head.eval()
    close = {"rtol": 0, "atol": OUTPUT_ATOL}
    torch.testing.assert_close(mask_features, expected["mask_features"], **close)
    torch.testing.assert_close(encoder_features, expected["encoder_features"], **close)
    assert len(multi_scale) == len(expected["multi_scale_features"]) == 3
    for act, exp in zip(multi_scale, expected["multi_scale_features"]):
        torch.testing.assert_close(act, exp, **close)
    assert len(actual["aux_outputs"]) == len(expected["aux_outputs"]) == 3
    for layer, (act, exp) in enumerate(zip(_predictions(actual), _predictions(expected))):
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(act[key], exp[key], msg=f"{key} of prediction {layer}",
                                       **close)


def _select(out, images):
    return {
        "pred_logits": out["pred_logits"][images],
        "pred_masks": out["pred_masks"][images],
        "aux_outputs": [{k: a[k][images] for k in a} for a in out["aux_outputs"]],
    }


def _case(golden, name):
    case = golden["criterion"]["cases"][name]
    images = case["images"]
    return case, _select(golden["outputs"], images), [golden["targets"][i] for i in images]


def _as_lists(indices):
    return [(i.tolist(), j.tolist()) for i, j in indices]


def _check_matches(golden, vlt_model, case_name):
    """VLT's matcher on each official prediction (final, then auxiliary), torch seeded before
    each call as in the official run: the same (query, target) pairs."""
    case, outputs, targets = _case(golden, case_name)
    matcher = vlt_model.criterion.matcher
    for layer, prediction in enumerate([outputs] + outputs["aux_outputs"]):
        torch.manual_seed(golden["criterion"]["seed"])
        pair = {k: prediction[k] for k in ("pred_logits", "pred_masks")}
        expected = case["matcher_indices"][layer]
        assert _as_lists(matcher(pair, targets)) == _as_lists(expected), f"prediction {layer}"


def _check_losses(golden, vlt_model, case_name):
    """VLT's criterion on the official predictions, torch seeded once as in the official run (the
    matcher's points and the loss points share the random stream): the same unweighted losses.
    ``loss_ce*`` depend on the criterion's own matches, so another match fails here too."""
    case, outputs, targets = _case(golden, case_name)
    criterion = vlt_model.criterion
    assert dict(criterion.weight_dict) == golden["criterion"]["weight_dict"]
    torch.manual_seed(golden["criterion"]["seed"])
    losses = criterion(outputs, targets)
    assert sorted(losses) == sorted(case["losses"])
    for key, value in case["losses"].items():
        torch.testing.assert_close(losses[key], value, rtol=0, atol=LOSS_ATOL, msg=key)


@pytest.mark.parametrize(
    "case_name",
    [
        "with_targets",
        # Image 1 of 3 is all ignored: official HungarianMatcher draws its points for it too.
        "with_empty_image",
    ],
)
def test_matches_and_losses_equal_the_official_ones(golden, vlt_model, case_name):
    _check_matches(golden, vlt_model, case_name)
    _check_losses(golden, vlt_model, case_name)


def _legacy_layout(state):
    """A pre-version-2 checkpoint: the pixel decoder's weights directly under ``sem_seg_head``
    and the decoder's initial query features named ``static_query``."""
    legacy = {}
    for key, value in state.items():
        key = key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")
        legacy[key.replace("predictor.query_feat.", "predictor.static_query.")] = value
    return legacy


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_legacy_checkpoint_is_converted_while_loading(golden, tmp_path, fmt, caplog):
    state = golden["state_dict"]
    legacy = _legacy_layout(state)
    assert "sem_seg_head.adapter_1.weight" in legacy
    assert "sem_seg_head.predictor.static_query.weight" in legacy
    path = tmp_path / f"model_final.{fmt}"
    if fmt == "pkl":
        payload = {"model": {k: v.numpy() for k, v in legacy.items()}, "__author__": "MaskFormer"}
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        # Version-1 metadata, as an old training loop wrote it.
        legacy = collections.OrderedDict(legacy)
        legacy._metadata = {"sem_seg_head": {"version": 1}, "sem_seg_head.predictor": {}}
        torch.save({"model": legacy}, path)

    target = _HeadAndCriterion(golden, seed=2)
    with caplog.at_level("WARNING"):
        DetectionCheckpointer(target).load(str(path))
    assert "Weight format of MaskFormerHead has changed" in caplog.text
    assert "Weight format of MultiScaleMaskedTransformerDecoder has changed" in caplog.text
    loaded = target.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_current_checkpoint_is_not_converted(golden, caplog):
    # Version-2 metadata (what state_dict() writes today): keys are taken as they are.
    state = _HeadAndCriterion(golden, seed=1).state_dict()
    assert state._metadata["sem_seg_head"]["version"] == 2
    assert state._metadata["sem_seg_head.predictor"]["version"] == 2
    target = _HeadAndCriterion(golden, seed=2)
    with caplog.at_level("WARNING"):
        target.load_state_dict(state)
    assert "Weight format" not in caplog.text
