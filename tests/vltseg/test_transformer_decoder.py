"""The masked-attention transformer decoder and the head: shapes, deep supervision, empty-mask
reset, round-robin levels, query overrides, and the head on Detectron2's own ResNet."""
import pytest
import torch
from detectron2.modeling import build_backbone, build_sem_seg_head

from vltseg.modeling import (
    MaskFormerHead,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)
from vltseg.modeling.transformer_decoder import attention_mask_from_masks

from .tiny_head import features, input_shape, tiny_cfg

LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]  # coarse to fine


def _decoder():
    return build_transformer_decoder(tiny_cfg(), 64, mask_classification=True)


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = [torch.randn(batch, 64, h, w, generator=g) for h, w in LEVEL_SIZES]
    return levels, torch.randn(batch, 64, 16, 24, generator=g)


def test_shapes_and_deep_supervision():
    decoder = _decoder()
    assert isinstance(decoder, MultiScaleMaskedTransformerDecoder)
    assert decoder.num_layers == 3  # MODEL.MASK_FORMER.DEC_LAYERS - 1
    out = decoder(*_inputs())
    assert out["pred_logits"].shape == (2, 10, 6)  # 5 classes + "no object"
    assert out["pred_masks"].shape == (2, 10, 16, 24)
    # One auxiliary prediction from the initial queries and one per layer but the last.
    assert len(out["aux_outputs"]) == 3
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 10, 6) and aux["pred_masks"].shape == (2, 10, 16, 24)
    # Intermediate predictions differ from the final one (each layer changes the queries).
    assert not torch.allclose(out["aux_outputs"][-1]["pred_logits"], out["pred_logits"])


def test_attention_mask_and_empty_mask_reset():
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 1, :2] = 5.0  # query 1: top half; query 0 and 2: empty masks
    logits[0, 2, 0, 0] = 0.0  # sigmoid(0) = 0.5 counts as foreground (blocked iff < 0.5)
    blocked = attention_mask_from_masks(logits, (4, 4), num_heads=2)
    assert blocked.shape == (2, 3, 16) and blocked.dtype == torch.bool
    assert torch.equal(blocked[0], blocked[1])  # same mask for every head
    assert not blocked[0, 0].any()  # empty mask: attends everywhere
    assert not blocked[0, 1, :8].any() and blocked[0, 1, 8:].all()
    assert not blocked[0, 2, 0] and blocked[0, 2, 1:].all()


def test_empty_masks_attend_everywhere_in_the_decoder():
    levels, mask_features = _inputs()
    mask_features = torch.ones_like(mask_features)
    decoder = _decoder()
    last = decoder.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1.0)  # every mask logit is -64: all masks empty
    empty = decoder(levels, mask_features)
    with torch.no_grad():
        last.bias.fill_(1.0)  # every mask logit is +64: nothing masked
    full = decoder(levels, mask_features)
    for a, b in zip([empty] + empty["aux_outputs"], [full] + full["aux_outputs"]):
        assert torch.isfinite(a["pred_logits"]).all()
        torch.testing.assert_close(a["pred_logits"], b["pred_logits"])


def test_round_robin_levels_coarse_first():
    decoder = build_transformer_decoder(
        _with(tiny_cfg(), "MODEL.MASK_FORMER.DEC_LAYERS", 8), 64, mask_classification=True
    )
    seen = []
    for layer in decoder.transformer_cross_attention_layers:
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(
                (args[1].shape[1], kwargs["memory_mask"].shape[-1])
            ),
            with_kwargs=True,
        )
    decoder(*_inputs())
    sizes = [h * w for h, w in LEVEL_SIZES]
    expected = [sizes[i % 3] for i in range(7)]
    # Keys and the attention mask both come from level i % 3.
    assert seen == list(zip(expected, expected))


def _with(cfg, key, value):
    cfg.merge_from_list([key, value])
    return cfg


def test_query_overrides():
    decoder = _decoder()
    levels, mask_features = _inputs()
    base = decoder(levels, mask_features)["pred_logits"]
    # The learned parameters passed explicitly ([Q, C] and [B, Q, C]) reproduce the default.
    embed = decoder.query_embed.weight.detach()
    same = decoder(levels, mask_features, query_embed=embed)["pred_logits"]
    torch.testing.assert_close(same, base)
    batched = decoder(levels, mask_features, query_embed=embed.expand(2, -1, -1))["pred_logits"]
    torch.testing.assert_close(batched, base)
    # Other embeddings / features change the output, per image.
    new_embed = torch.randn(2, 10, 64)
    changed = decoder(levels, mask_features, query_embed=new_embed)["pred_logits"]
    assert not torch.allclose(changed, base)
    new_feat = torch.randn(10, 64)
    changed_feat = decoder(levels, mask_features, query_feat=new_feat)["pred_logits"]
    assert not torch.allclose(changed_feat, base)
    with pytest.raises(ValueError, match="query_embed must have shape"):
        decoder(levels, mask_features, query_embed=torch.randn(7, 64))


def test_overridden_queries_receive_gradients():
    decoder = _decoder()
    query_embed = torch.randn(2, 10, 64, requires_grad=True)
    query_feat = torch.randn(10, 64, requires_grad=True)
    out = decoder(*_inputs(), query_embed=query_embed, query_feat=query_feat)
    (out["pred_logits"].sum() + out["pred_masks"].sum()).backward()
    assert torch.count_nonzero(query_embed.grad) > 0 and torch.count_nonzero(query_feat.grad) > 0
    assert decoder.query_embed.weight.grad is None and decoder.query_feat.weight.grad is None


def test_head_from_config_with_detectron2_resnet():
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_backbone(cfg)
    head = build_sem_seg_head(cfg, backbone.output_shape())
    assert isinstance(head, MaskFormerHead)
    assert head.pixel_decoder is not None and head.predictor is not None
    out = head(backbone(torch.randn(1, 3, 64, 95)))
    assert out["pred_logits"].shape == (1, 10, 6)
    assert out["pred_masks"].shape == (1, 10, 16, 24)
    assert len(out["aux_outputs"]) == 3


def test_head_passes_query_overrides_through():
    head = build_sem_seg_head(tiny_cfg(), input_shape())
    feats = features(batch=1)
    base = head(feats)["pred_masks"]
    embed = torch.randn(10, 64)
    assert not torch.allclose(head(feats, query_embed=embed)["pred_masks"], base)
    assert not torch.allclose(head(feats, query_feat=embed)["pred_masks"], base)


def test_head_rejects_unsupported_decoder_input():
    cfg = tiny_cfg()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE"):
        build_sem_seg_head(cfg, input_shape())


def test_dropout_reaches_the_pixel_decoder_only():
    # Official Mask2Former hard-codes dropout 0.0 in the masked-attention decoder;
    # MODEL.MASK_FORMER.DROPOUT is the deformable encoder's.
    cfg = tiny_cfg()
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.3
    head = build_sem_seg_head(cfg, input_shape())
    decoder_p = [m.p for m in head.predictor.modules() if isinstance(m, torch.nn.Dropout)]
    decoder_p += [m.dropout for m in head.predictor.modules()
                  if isinstance(m, torch.nn.MultiheadAttention)]
    encoder_p = [m.p for m in head.pixel_decoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(decoder_p) == 3 * 3 + 2 * 3  # 3 layers: dropouts of SA, CA, FFN; 2 attentions
    assert set(decoder_p) == {0.0}
    assert len(encoder_p) == 3 * 2 and set(encoder_p) == {0.3}
