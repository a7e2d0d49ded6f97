"""The MSDeformAttn pixel decoder: shapes at the strides of 64x96 and padded 64x95 images,
the FPN level at stride 4, gradients, config errors."""

import pytest
import torch

from vltseg.modeling import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder, build_pixel_decoder

from .tiny_head import features, input_shape, tiny_cfg


@pytest.mark.parametrize("width", [96, 95])
def test_output_shapes(width):
    decoder = build_pixel_decoder(tiny_cfg(), input_shape())
    assert isinstance(decoder, MSDeformAttnPixelDecoder)
    feats = features(width=width)
    mask_features, encoder_features, multi_scale = decoder(feats)
    assert mask_features.shape == (2, 64, 16, 24)
    assert encoder_features.shape == (2, 64, 2, 3)
    # Coarse to fine: strides 32, 16, 8.
    assert [tuple(f.shape) for f in multi_scale] == [(2, 64, 2, 3), (2, 64, 4, 6), (2, 64, 8, 12)]
    assert all(torch.isfinite(t).all() for t in [mask_features, *multi_scale])


def test_odd_feature_sizes():
    # A backbone that floors sizes (e.g. 65x97 input) gives maps that are not exact halves.
    decoder = build_pixel_decoder(tiny_cfg(), input_shape())
    feats = {
        "res2": torch.randn(1, 16, 17, 25),
        "res3": torch.randn(1, 24, 9, 13),
        "res4": torch.randn(1, 32, 5, 7),
        "res5": torch.randn(1, 40, 3, 4),
    }
    mask_features, _, multi_scale = decoder(feats)
    assert mask_features.shape == (1, 64, 17, 25)
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(3, 4), (5, 7), (9, 13)]


def test_fpn_adds_exactly_the_stride_4_level():
    decoder = build_pixel_decoder(tiny_cfg(), input_shape())
    assert decoder.num_fpn_levels == 1
    assert decoder.transformer_in_features == ["res3", "res4", "res5"]
    names = {n.split(".")[0] for n, _ in decoder.named_parameters()}
    assert {"adapter_1", "layer_1"} <= names and "adapter_2" not in names
    # The stride-4 map matters: changing it changes the mask features.
    feats = features()
    base = decoder(feats)[0]
    feats["res2"] = feats["res2"] + 1.0
    assert not torch.allclose(base, decoder(feats)[0])


def test_gradients_reach_every_parameter_and_input():
    decoder = build_pixel_decoder(tiny_cfg(), input_shape())
    # Deformable DETR initializes the query-dependent weights to zero, so at step 0 the queries
    # (and the level embeddings in them) get no gradient; move them as one step of training would.
    with torch.no_grad():
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            layer.self_attn.attention_weights.weight.normal_(0, 0.01)
    feats = {k: v.requires_grad_() for k, v in features().items()}
    mask_features, _, multi_scale = decoder(feats)
    (mask_features.square().mean() + sum(f.square().mean() for f in multi_scale)).backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert torch.count_nonzero(p.grad) > 0, name
    assert all(torch.count_nonzero(f.grad) > 0 for f in feats.values())


def test_config_errors_name_the_key():
    cfg = tiny_cfg()
    shapes = input_shape()
    del shapes["res2"]
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.IN_FEATURES"):
        build_pixel_decoder(cfg, shapes)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "NoSuchDecoder"
    with pytest.raises(KeyError, match="NoSuchDecoder"):
        build_pixel_decoder(cfg, input_shape())
    assert "MSDeformAttnPixelDecoder" in PIXEL_DECODER_REGISTRY
