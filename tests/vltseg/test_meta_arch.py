"""The VLTSeg meta-architecture with tiny models: every switch trains, gradients go exactly where
they should, inference returns per-class scores at the requested size."""
import time

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vltseg import VLTSeg
from vltseg.meta_arch import class_names_from_config, semantic_inference

from .tiny_model import IGNORE, assert_grads_match_requires_grad, batch, tiny_cfg

MASK_LOSSES = {"loss_ce", "loss_mask", "loss_dice"}
# The text head reads the backbone's CLIP projection (DenseCLIP's pixel embeddings).
TEXT_HEAD_ON = {"MODEL.VLTSEG.TEXT_HEAD.ENABLED": True, "MODEL.VLT_BACKBONE.CLIP_HEAD": True}


def train_step(model, inputs):
    model.train()
    with EventStorage():
        losses = model(inputs)
    total = sum(losses.values())
    total.backward()
    return losses


def aux_keys(cfg):
    return {f"{k}_{i}" for k in MASK_LOSSES for i in range(cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1)}


def test_train_full_finetune():
    cfg = tiny_cfg()
    model = build_model(cfg)
    assert isinstance(model, VLTSeg)
    inputs = batch()
    inputs[0]["sem_seg"] = inputs[0]["sem_seg"].to(torch.uint8)  # as some mappers give them
    losses = train_step(model, inputs)
    assert set(losses) == MASK_LOSSES | aux_keys(cfg)
    assert all(torch.isfinite(v) for v in losses.values())
    assert_grads_match_requires_grad(model)
    assert all(p.requires_grad for p in model.backbone.trunk.parameters())


def test_train_with_text_head():
    cfg = tiny_cfg(**TEXT_HEAD_ON)
    model = build_model(cfg)
    losses = train_step(model, batch())
    assert set(losses) == MASK_LOSSES | aux_keys(cfg) | {"loss_ptm"}
    assert torch.isfinite(losses["loss_ptm"]) and losses["loss_ptm"] > 0
    assert_grads_match_requires_grad(model)
    text_tower = list(model.text_head.text_encoder.parameters())
    assert text_tower and not any(p.requires_grad or p.grad is not None for p in text_tower)
    assert model.text_head.contexts.grad is not None


def test_text_head_default_concat_runs_in_inference():
    # DenseCLIP concatenates the score map to the stride-16 map in training and inference
    model = build_model(tiny_cfg(**TEXT_HEAD_ON))
    assert model.text_head.concat_to == "res4"
    model.eval()
    with torch.no_grad():
        out = model(batch(sizes=((64, 96),)))
    assert out[0]["sem_seg"].shape == (19, 64, 96)


def test_clip_head_without_text_head_is_an_error():
    # the CLIP projection would get no gradient (DDP, solver)
    with pytest.raises(ValueError, match="TEXT_HEAD.ENABLED"):
        build_model(tiny_cfg(**{"MODEL.VLT_BACKBONE.CLIP_HEAD": True}))


def test_text_head_concat_and_inference():
    cfg = tiny_cfg(
        **TEXT_HEAD_ON, **{"MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO": "res5"}
    )
    model = build_model(cfg)
    train_step(model, batch())
    assert_grads_match_requires_grad(model)
    model.eval()
    with torch.no_grad():
        out = model(batch(sizes=((64, 96),)))
    assert out[0]["sem_seg"].shape == (19, 64, 96)


def test_optimizer_step_leaves_text_tower_unchanged():
    model = build_model(tiny_cfg(**TEXT_HEAD_ON))
    before = {k: v.clone() for k, v in model.text_head.text_encoder.state_dict().items()}
    contexts = model.text_head.contexts.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, batch())
    optimizer.step()
    after = model.text_head.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(contexts, model.text_head.contexts)


def test_train_frozen_backbone():
    cfg = tiny_cfg(**{"MODEL.VLT_BACKBONE.FINETUNE": "frozen"})
    model = build_model(cfg)
    train_step(model, batch())
    assert_grads_match_requires_grad(model)
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
    assert all(p.grad is not None for p in model.sem_seg_head.parameters() if p.requires_grad)


@pytest.mark.parametrize("link_features", [False, True])
def test_train_rein_with_query_linking(link_features):
    cfg = tiny_cfg(
        **{
            "MODEL.VLT_BACKBONE.FINETUNE": "rein",
            "MODEL.VLTSEG.REIN.LINK_QUERIES": True,
            "MODEL.VLTSEG.REIN.LINK_QUERY_FEATURES": link_features,
        }
    )
    model = build_model(cfg)
    assert model.query_linker is not None
    losses = train_step(model, batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert_grads_match_requires_grad(model)
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
    assert all(p.grad is not None for p in model.backbone.rein.parameters())
    assert all(p.grad is not None for p in model.query_linker.parameters())
    predictor = dict(model.sem_seg_head.named_parameters())
    assert not predictor["predictor.query_embed.weight"].requires_grad
    assert predictor["predictor.query_feat.weight"].requires_grad != link_features


def test_query_linking_changes_the_queries():
    cfg = tiny_cfg(
        **{"MODEL.VLT_BACKBONE.FINETUNE": "rein", "MODEL.VLTSEG.REIN.LINK_QUERIES": True}
    )
    model = build_model(cfg).eval()
    inputs = batch(sizes=((64, 96),))
    with torch.no_grad():
        linked = model(inputs)[0]["sem_seg"]
        model.query_linker.merge.bias.add_(1.0)
        changed = model(inputs)[0]["sem_seg"]
    assert not torch.allclose(linked, changed)


def test_rein_without_linking():
    cfg = tiny_cfg(
        **{"MODEL.VLT_BACKBONE.FINETUNE": "rein", "MODEL.VLTSEG.REIN.LINK_QUERIES": False}
    )
    model = build_model(cfg)
    assert model.query_linker is None
    train_step(model, batch())
    assert_grads_match_requires_grad(model)


def test_detectron2_resnet_backbone():
    cfg = tiny_cfg(
        **{
            "MODEL.BACKBONE.NAME": "build_resnet_backbone",
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
            "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
            "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
        }
    )
    model = build_model(cfg)
    assert model.size_divisibility == 32
    train_step(model, batch())
    # FREEZE_AT=2 (Detectron2's default) freezes the stem and res2.
    assert_grads_match_requires_grad(model)
    assert not model.backbone.stem.conv1.weight.requires_grad
    model.eval()
    with torch.no_grad():
        out = model(batch(sizes=((64, 95),)))
    assert out[0]["sem_seg"].shape == (19, 64, 95)


def test_inference_output_size_and_values():
    model = build_model(tiny_cfg()).eval()
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 190  # e.g. the mapper resized the image
    del inputs[1]["height"], inputs[1]["width"]
    with torch.no_grad():
        out = model(inputs)
    assert out[0]["sem_seg"].shape == (19, 128, 190)
    assert out[1]["sem_seg"].shape == (19, 64, 95)
    for o in out:
        assert torch.isfinite(o["sem_seg"]).all() and (o["sem_seg"] >= 0).all()


@pytest.mark.parametrize("width", [96, 95])
def test_sliding_window_with_one_window_equals_whole_image(width):
    whole = build_model(tiny_cfg()).eval()
    cfg = tiny_cfg(
        **{
            "TEST.SLIDING_WINDOW.ENABLED": True,
            "TEST.SLIDING_WINDOW.CROP_SIZE": (64, 96),
            "TEST.SLIDING_WINDOW.STRIDE": (32, 32),
        }
    )
    slide = build_model(cfg).eval()
    slide.load_state_dict(whole.state_dict())
    inputs = batch(sizes=((64, width),))
    with torch.no_grad():
        a, b = whole(inputs)[0]["sem_seg"], slide(inputs)[0]["sem_seg"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_tta_output_shapes():
    cfg = tiny_cfg(
        **{"TEST.AUG.ENABLED": True, "TEST.AUG.SCALES": (0.5, 1.0, 1.5), "TEST.AUG.FLIP": True}
    )
    model = build_model(cfg).eval()
    assert model.tta_scales == (0.5, 1.0, 1.5) and model.tta_flip
    with torch.no_grad():
        out = model(batch(sizes=((64, 95),)))
    assert out[0]["sem_seg"].shape == (19, 64, 95)
    assert torch.isfinite(out[0]["sem_seg"]).all()


@pytest.mark.slow
def test_sliding_window_on_a_full_size_frame():
    cfg = tiny_cfg(
        **{
            "TEST.SLIDING_WINDOW.ENABLED": True,
            "TEST.SLIDING_WINDOW.CROP_SIZE": (512, 512),
            "TEST.SLIDING_WINDOW.STRIDE": (426, 426),
            "TEST.SLIDING_WINDOW.BATCH_SIZE": 4,
        }
    )
    model = build_model(cfg).eval()
    calls = []
    score_fn = model.semantic_scores
    model.semantic_scores = lambda x: calls.append(tuple(x.shape)) or score_fn(x)
    image = {"image": torch.zeros(3, 1024, 2048, dtype=torch.uint8), "height": 1024, "width": 2048}
    with torch.no_grad():
        out = model([image])[0]["sem_seg"]
    assert out.shape == (19, 1024, 2048) and torch.isfinite(out).all()
    # 3 x 5 windows of 512x512, 4 per forward.
    assert [c[0] for c in calls] == [4, 4, 4, 3] and {c[-2:] for c in calls} == {(512, 512)}


def test_prepare_targets():
    model = build_model(tiny_cfg())
    sem_seg = torch.tensor([[[0, 0, 3], [IGNORE, 3, 3]], [[IGNORE, IGNORE, IGNORE], [1, 1, 1]]])
    targets = model.prepare_targets(sem_seg)
    assert targets[0]["labels"].tolist() == [0, 3]
    assert targets[0]["masks"].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]
    assert targets[1]["labels"].tolist() == [1]
    assert targets[1]["masks"].sum() == 3


def test_semantic_inference_by_hand():
    mask_cls = torch.randn(1, 3, 5)
    mask_pred = torch.randn(1, 3, 2, 2)
    probs = mask_cls.softmax(-1)[0, :, :-1]
    expected = torch.zeros(4, 2, 2)
    for q in range(3):
        for c in range(4):
            expected[c] += probs[q, c] * mask_pred[0, q].sigmoid()
    torch.testing.assert_close(semantic_inference(mask_cls, mask_pred)[0], expected)


def test_class_names_and_errors():
    cfg = tiny_cfg()
    assert class_names_from_config(cfg)[:2] == ["road", "sidewalk"]
    cfg.MODEL.VLTSEG.CLASS_NAMES = ["a", "b"]
    with pytest.raises(ValueError, match="CLASS_NAMES has 2 names .*NUM_CLASSES=19"):
        class_names_from_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
    assert build_model(cfg).class_names == ["a", "b"]
    model = build_model(tiny_cfg())
    inputs = batch()
    del inputs[0]["sem_seg"]
    with pytest.raises(KeyError, match="sem_seg"):
        model.train()(inputs)


def test_rein_token_query_mismatch_is_an_error():
    cfg = tiny_cfg(
        **{
            "MODEL.VLT_BACKBONE.FINETUNE": "rein",
            "MODEL.VLT_BACKBONE.REIN.NUM_TOKENS": 5,
            "MODEL.VLTSEG.REIN.LINK_QUERIES": True,
        }
    )
    with pytest.raises(ValueError, match="NUM_TOKENS=5 must equal"):
        build_model(cfg)


def test_query_linking_outside_rein_mode_is_an_error():
    cfg = tiny_cfg(**{"MODEL.VLTSEG.REIN.LINK_QUERIES": True})
    with pytest.raises(ValueError, match="FINETUNE to 'rein'"):
        build_model(cfg)


def test_training_loss_falls():
    # A fixed set of structured scenes (sky / buildings / road with a car) learned by a tiny model.
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 1024}))
    scenes = []
    for i in range(4):
        sem_seg = torch.zeros(64, 96, dtype=torch.long)
        sem_seg[:20] = 10  # sky
        sem_seg[20:36] = 2  # building
        x0 = 10 + 15 * i
        sem_seg[40:56, x0 : x0 + 24] = 13  # car
        palette = torch.tensor([[128, 64, 128]] * 19, dtype=torch.uint8)
        palette[10], palette[2], palette[13] = (
            torch.tensor([70, 130, 180]), torch.tensor([70, 70, 70]), torch.tensor([0, 0, 142])
        )
        image = palette[sem_seg].permute(2, 0, 1).contiguous()
        scenes.append({"image": image, "sem_seg": sem_seg})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    start = time.perf_counter()
    model.train()
    with EventStorage():
        for it in range(40):
            losses = model(scenes[it % 2 * 2 : it % 2 * 2 + 2])
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < 0.6 * first, (first, last, time.perf_counter() - start)


@pytest.mark.slow
def test_training_on_synthdg_through_the_mapper(tmp_path):
    # End to end on data: a tiny SynthDG copy, the "semantic_dg" mapper (crop, flip, photometric
    # distortion), the model and AdamW; the loss must fall clearly within 80 steps.
    from vlt_common.benchmarks.synthdg import SynthDGSpec, load_synthdg
    from vltseg.data import SemanticDGDatasetMapper

    np.random.seed(0)
    spec = SynthDGSpec(height=64, width=128, num_train=4, num_val=1)
    dicts = load_synthdg(str(tmp_path), "source", "train", spec=spec)
    cfg = tiny_cfg(
        **{
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 1024,
            "INPUT.CROP.SIZE": (64, 96),
            "INPUT.SCALE_RANGE_TRAIN": (1.0, 1.0),
        }
    )
    mapper = SemanticDGDatasetMapper(cfg, True)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    with EventStorage():
        for it in range(80):
            inputs = [mapper(dicts[(2 * it + k) % len(dicts)]) for k in range(2)]
            total = sum(model(inputs).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last < 0.7 * first, (first, last)
