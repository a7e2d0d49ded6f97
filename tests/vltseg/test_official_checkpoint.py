"""Official Mask2Former checkpoints (semantic models, ``sem_seg_head.*`` keys) load into our head
through Detectron2's DetectionCheckpointer, as model-zoo ``.pkl`` or as ``.pth``, with every key
landing and identical outputs."""
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_sem_seg_head
from torch import nn

from vltseg.modeling import build_criterion

from .test_pixel_decoder import features, input_shape, tiny_cfg

ENC_LAYERS, DEC_LAYERS, LEVELS = 2, 3, 3


def official_keys():
    """Every key of an official Mask2Former semantic-segmentation checkpoint for tiny_cfg()
    (2 encoder layers, 3 decoder layers, encoder on res3-res5, FPN on res2, GN, conv_dim ==
    hidden_dim so the decoder has no input projection), criterion buffer included."""
    wb = ("weight", "bias")
    pd = "sem_seg_head.pixel_decoder."
    keys = [f"{pd}adapter_1.weight", f"{pd}adapter_1.norm.weight", f"{pd}adapter_1.norm.bias"]
    keys += [f"{pd}layer_1.weight", f"{pd}layer_1.norm.weight", f"{pd}layer_1.norm.bias"]
    keys += [f"{pd}input_proj.{i}.{j}.{p}" for i in range(LEVELS) for j in (0, 1) for p in wb]
    keys += [f"{pd}mask_features.{p}" for p in wb]
    keys += [f"{pd}transformer.level_embed"]
    for i in range(ENC_LAYERS):
        layer = f"{pd}transformer.encoder.layers.{i}."
        for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            keys += [f"{layer}self_attn.{m}.{p}" for p in wb]
        keys += [f"{layer}{m}.{p}" for m in ("norm1", "linear1", "linear2", "norm2") for p in wb]
    pr = "sem_seg_head.predictor."
    attn = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    for i in range(DEC_LAYERS):
        sa = f"{pr}transformer_self_attention_layers.{i}."
        ca = f"{pr}transformer_cross_attention_layers.{i}."
        ffn = f"{pr}transformer_ffn_layers.{i}."
        keys += [f"{sa}self_attn.{a}" for a in attn] + [f"{sa}norm.{p}" for p in wb]
        keys += [f"{ca}multihead_attn.{a}" for a in attn] + [f"{ca}norm.{p}" for p in wb]
        keys += [f"{ffn}{m}.{p}" for m in ("linear1", "linear2", "norm") for p in wb]
    keys += [f"{pr}decoder_norm.{p}" for p in wb]
    keys += [f"{pr}query_feat.weight", f"{pr}query_embed.weight", f"{pr}level_embed.weight"]
    keys += [f"{pr}class_embed.{p}" for p in wb]
    keys += [f"{pr}mask_embed.layers.{i}.{p}" for i in range(3) for p in wb]
    keys += ["criterion.empty_weight"]
    return keys


class _Mask2FormerLike(nn.Module):
    """The part of official ``MaskFormer`` that holds the head's weights: ``sem_seg_head`` and
    ``criterion`` (VLTSeg's meta-architecture uses the same attribute names)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        cfg = tiny_cfg()
        self.sem_seg_head = build_sem_seg_head(cfg, input_shape())
        self.criterion = build_criterion(cfg)


def _official_state(model):
    """Perturb the initialization (zero-initialized weights, unit norms) so that a key landing
    in the wrong place cannot go unnoticed, and return the state dict."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.state_dict()


def test_our_keys_are_the_official_keys():
    model = _Mask2FormerLike(seed=0)
    assert sorted(model.state_dict()) == sorted(official_keys())


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_official_checkpoint_loads_with_identical_outputs(tmp_path, fmt):
    source = _Mask2FormerLike(seed=1).eval()
    state = _official_state(source)
    path = tmp_path / f"model_final.{fmt}"
    if fmt == "pkl":
        # Detectron2 model-zoo pickle: numpy arrays under "model", plus "__author__".
        payload = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Mask2Former"}
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        # A checkpoint written by the official training loop (DetectionCheckpointer.save).
        torch.save({"model": state, "iteration": 89999}, path)

    target = _Mask2FormerLike(seed=2).eval()
    extra = DetectionCheckpointer(target).load(str(path))
    assert "model" not in extra
    loaded = target.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)

    feats = features(batch=2, width=95)
    with torch.no_grad():
        expected = source.sem_seg_head(feats)
        actual = target.sem_seg_head(feats)
    for exp, act in zip([expected] + expected["aux_outputs"], [actual] + actual["aux_outputs"]):
        torch.testing.assert_close(act["pred_logits"], exp["pred_logits"], rtol=0, atol=0)
        torch.testing.assert_close(act["pred_masks"], exp["pred_masks"], rtol=0, atol=0)


def _legacy_layout(state):
    """A pre-version-2 checkpoint: the pixel decoder's weights directly under ``sem_seg_head``
    and the decoder's initial query features named ``static_query``."""
    legacy = {}
    for key, value in state.items():
        key = key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")
        legacy[key.replace("predictor.query_feat.", "predictor.static_query.")] = value
    return legacy


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_legacy_checkpoint_is_converted_while_loading(tmp_path, fmt, caplog):
    source = _Mask2FormerLike(seed=1).eval()
    state = _official_state(source)
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
        legacy = type(state)(legacy)
        legacy._metadata = {"sem_seg_head": {"version": 1}, "sem_seg_head.predictor": {}}
        torch.save({"model": legacy}, path)

    target = _Mask2FormerLike(seed=2).eval()
    with caplog.at_level("WARNING"):
        DetectionCheckpointer(target).load(str(path))
    assert "Weight format of MaskFormerHead has changed" in caplog.text
    assert "Weight format of MultiScaleMaskedTransformerDecoder has changed" in caplog.text
    loaded = target.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_current_checkpoint_is_not_converted(caplog):
    # Version-2 metadata (what state_dict() writes today): keys are taken as they are.
    source = _Mask2FormerLike(seed=1)
    state = source.state_dict()
    assert state._metadata["sem_seg_head"]["version"] == 2
    assert state._metadata["sem_seg_head.predictor"]["version"] == 2
    target = _Mask2FormerLike(seed=2)
    with caplog.at_level("WARNING"):
        target.load_state_dict(state)
    assert "Weight format" not in caplog.text
