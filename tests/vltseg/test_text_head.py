"""The DenseCLIP-style pixel-text matching head (vltseg.text_head) with a tiny text tower."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec

from vlt_common.engine.defaults import get_vlt_cfg
from vlt_common.modeling.text_encoder import CLIPTextEncoder
from vltseg.text_head import ContextDecoder, DenseCLIPTextHead

CLASSES = ["road", "car", "sky"]
IGNORE = 255


@pytest.fixture(scope="module")
def text_encoder():
    return CLIPTextEncoder("ViT-B-16", width=64, layers=2, heads=2, embed_dim=32)


def _head(text_encoder, **kwargs):
    params = dict(
        text_encoder=text_encoder,
        class_names=CLASSES,
        in_feature="res5",
        in_channels=48,
        refine_width=32,
        refine_heads=2,
        refine_layers=2,
    )
    params.update(kwargs)
    return DenseCLIPTextHead(**params)


def _features(batch=2):
    return {"res4": torch.randn(batch, 48, 8, 12), "res5": torch.randn(batch, 48, 4, 6)}


def test_score_map_shape_and_range(text_encoder):
    head = _head(text_encoder)
    score = head(_features())
    assert score.shape == (2, 3, 4, 6)
    assert score.abs().max() <= 1.0 + 1e-5
    assert head.contexts.shape == (8, 64)
    assert head.gamma.shape == (32,) and torch.all(head.gamma == 1e-4)


def test_refinement_starts_near_the_plain_text_embeddings(text_encoder):
    # gamma = 1e-4: the context-aware update barely moves the text embeddings at initialization,
    # and with gamma = 0 it does not move them at all.
    head = _head(text_encoder)
    visual = head.visual_proj(_features()["res5"])
    plain = text_encoder.encode_with_context(head.contexts, CLASSES)
    refined = head.text_embeddings(visual)
    diff = (refined - plain.unsqueeze(0)).abs().max()
    assert 0 < diff < 1e-3
    with torch.no_grad():
        head.gamma.zero_()
    torch.testing.assert_close(head.text_embeddings(visual), plain.expand(2, -1, -1))


def test_context_decoder_attends_to_visual_tokens():
    decoder = ContextDecoder(embed_dim=16, width=32, num_heads=2, num_layers=2, dropout=0.0)
    text = torch.randn(2, 3, 16)
    out1 = decoder(text, torch.randn(2, 10, 16))
    out2 = decoder(text, torch.randn(2, 10, 16))
    assert out1.shape == (2, 3, 16)
    assert not torch.allclose(out1, out2)


def test_loss_prefers_correct_scores_and_ignores_255(text_encoder):
    head = _head(text_encoder)
    labels = torch.randint(0, 3, (1, 16, 24))
    labels[0, :4] = IGNORE
    # Score maps at label resolution, so the upsampling is the identity.
    right = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 2 - 1
    wrong = right.roll(1, dims=1)
    loss_right = head.losses(right, labels)["loss_ptm"]
    loss_wrong = head.losses(wrong, labels)["loss_ptm"]
    assert loss_right < 0.01 < loss_wrong
    # Expected value: 0.4 * CE of score / 0.07 over the labelled pixels only.
    expected = 0.4 * F.cross_entropy(wrong / 0.07, labels, ignore_index=IGNORE)
    torch.testing.assert_close(loss_wrong, expected)
    changed = wrong.clone()
    changed[..., :4, :] = torch.randn_like(changed[..., :4, :])
    torch.testing.assert_close(head.losses(changed, labels)["loss_ptm"], loss_wrong)


def test_loss_upsamples_the_score_map(text_encoder):
    head = _head(text_encoder)
    score = torch.randn(2, 3, 4, 6, requires_grad=True)
    loss = head.losses(score, torch.randint(0, 3, (2, 64, 96)))["loss_ptm"]
    loss.backward()
    assert torch.isfinite(loss) and score.grad.abs().sum() > 0


def test_all_ignored_gives_zero_loss_with_graph(text_encoder):
    head = _head(text_encoder)
    score = torch.randn(1, 3, 4, 6, requires_grad=True)
    loss = head.losses(score, torch.full((1, 32, 48), IGNORE))["loss_ptm"]
    assert loss.item() == 0.0
    loss.backward()


def test_gradients_reach_the_head_not_the_text_tower(text_encoder):
    head = _head(text_encoder)
    features = {k: v.requires_grad_() for k, v in _features().items()}
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1)  # frozen ones included on purpose
    loss = head.losses(head(features), torch.randint(0, 3, (2, 32, 48)))["loss_ptm"]
    loss.backward()
    for name, param in head.named_parameters():
        if name.startswith("text_encoder."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert features["res5"].grad is not None  # the backbone is trained through the matching
    optimizer.step()
    for key, value in text_encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    head.train()
    assert not text_encoder.training


def test_concat_score_map(text_encoder):
    head = _head(text_encoder, concat_to="res4")
    shapes = {"res4": ShapeSpec(channels=48, stride=16), "res5": ShapeSpec(channels=48, stride=32)}
    new_shapes = head.head_input_shape(shapes)
    assert new_shapes["res4"].channels == 48 + 3 and new_shapes["res4"].stride == 16
    assert new_shapes["res5"] == shapes["res5"] and shapes["res4"].channels == 48
    features = _features()
    score = head(features)
    out = head.concat_score_map(features, score)
    assert out["res4"].shape == (2, 51, 8, 12)
    assert torch.equal(out["res4"][:, :48], features["res4"])
    assert features["res4"].shape[1] == 48  # the input dict is not modified
    same_level = _head(text_encoder, concat_to="res5").concat_score_map(features, score)
    assert torch.equal(same_level["res5"][:, 48:], score)


def test_from_config_validates_keys(text_encoder):
    cfg = get_vlt_cfg()
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_WIDTH = 64
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_LAYERS = 1
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_HEADS = 2
    shapes = {"res5": ShapeSpec(channels=48, stride=32)}
    head = DenseCLIPTextHead(cfg, shapes, CLASSES)
    assert head.text_encoder.width == 64 and len(head.text_encoder.text.transformer.resblocks) == 1
    assert head.visual_proj.in_channels == 48 and head.loss_weight == 0.4
    cfg.MODEL.VLTSEG.TEXT_HEAD.IN_FEATURE = "res9"
    with pytest.raises(KeyError, match="IN_FEATURE='res9'"):
        DenseCLIPTextHead(cfg, shapes, CLASSES)
    cfg.MODEL.VLTSEG.TEXT_HEAD.IN_FEATURE = "res5"
    cfg.MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO = "p7"
    with pytest.raises(KeyError, match="CONCAT_TO='p7'"):
        DenseCLIPTextHead(cfg, shapes, CLASSES)
