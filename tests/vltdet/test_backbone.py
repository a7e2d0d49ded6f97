"""The simple feature pyramid over the shared ViT: padding, pyramid shapes, the backbone contract
(layer ids, lr-decay groups, trunk freezing) and config errors."""
import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import ImageList

from vlt_common.modeling.backbone import VLTBackbone
from vlt_common.solver import build_optimizer
from vltdet.backbone import VLTSimpleFeaturePyramid


def _padded_size(model, sizes):
    images = [torch.zeros(3, h, w) for h, w in sizes]
    return tuple(
        ImageList.from_tensors(
            images,
            model.backbone.size_divisibility,
            padding_constraints=model.backbone.padding_constraints,
        ).tensor.shape[-2:]
    )


def test_pads_to_divisibility_and_square(tiny_cfg):
    backbone = build_backbone(tiny_cfg())
    assert isinstance(backbone, VLTSimpleFeaturePyramid)
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    model = build_model(tiny_cfg())
    # 95 is not a multiple of the coarsest stride (32) nor of the patch (16).
    assert _padded_size(model, [(64, 95)]) == (64, 96)
    assert _padded_size(model, [(33, 64), (50, 70)]) == (64, 96)
    model = build_model(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLTDET.SQUARE_PAD", 128))
    assert _padded_size(model, [(64, 95)]) == (128, 128)


def test_pyramid_shapes(tiny_cfg):
    backbone = build_backbone(tiny_cfg())
    shapes = backbone.output_shape()
    strides = {k: v.stride for k, v in shapes.items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert {v.channels for v in shapes.values()} == {32}
    features = backbone(torch.randn(2, 3, 64, 96))
    for name, feature in features.items():
        stride = shapes[name].stride
        assert feature.shape == (2, 32, -(-64 // stride), -(-96 // stride)), name
        assert torch.isfinite(feature).all()


@pytest.mark.parametrize(
    "patch, scales, expected",
    [
        (16, (2.0, 1.0, 0.5), {"p3": 8, "p4": 16, "p5": 32, "p6": 64}),
        # The demo's patch-8 trunk: the extra level pools the coarsest scaled map (p4 here), not a
        # fixed "p5" that this pyramid does not produce.
        (8, (1.0, 0.5), {"p3": 8, "p4": 16, "p5": 32}),
        (8, (4.0, 2.0, 1.0, 0.5), {"p1": 2, "p2": 4, "p3": 8, "p4": 16, "p5": 32}),
    ],
)
def test_pyramid_levels_follow_the_patch_size(tiny_cfg, patch, scales, expected):
    backbone = build_backbone(
        tiny_cfg(
            "Base-VLTDet.yaml",
            "MODEL.VLT_BACKBONE.PATCH_SIZE", patch,
            "MODEL.VLTDET.SCALE_FACTORS", scales,
        )  # fmt: skip
    )
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == expected
    features = backbone(torch.randn(1, 3, 64, 96))
    assert list(features) == list(expected)
    for name, feature in features.items():
        assert feature.shape[-2:] == (-(-64 // expected[name]), -(-96 // expected[name])), name
    # the extra level is the max-pool (kernel 1, stride 2) of the level before it
    last, before = list(expected)[-1], list(expected)[-2]
    assert torch.equal(features[last], features[before][..., ::2, ::2])


def test_layer_ids_and_lr_decay_groups(tiny_cfg):
    cfg = tiny_cfg("Base-VLTDet.yaml", "SOLVER.LAYER_DECAY", 0.5, "SOLVER.BASE_LR", 1.0)
    model = build_model(cfg)
    backbone = model.backbone
    assert isinstance(backbone, VLTBackbone)  # the contract of vlt_common's backbone package
    assert backbone.num_layers == 2
    lr_of = {}
    for group in build_optimizer(cfg, model).param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    seen = set()
    for name, p in model.named_parameters():
        if not name.startswith("backbone.net.trunk."):
            # pyramid, RPN and ROI heads train at the base lr
            assert lr_of[id(p)] == 1.0, name
            continue
        local = name[len("backbone.") :]
        layer = backbone.layer_id(local)
        assert layer == backbone.net.layer_id(local[len("net.") :])
        assert lr_of[id(p)] == pytest.approx(0.5 ** (3 - layer)), name
        seen.add(layer)
    # embeddings (0) and both blocks (1, 2); the pooling head was stripped from the trunk
    assert seen == {0, 1, 2}
    assert backbone.layer_id("simfp_2.0.weight") == 3


def test_trunk_freezing_is_forwarded(tiny_cfg):
    backbone = build_backbone(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLT_BACKBONE.FINETUNE", "frozen"))
    assert not any(p.requires_grad for p in backbone.net.trunk.parameters())
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("simfp_"))
    backbone = build_backbone(tiny_cfg())
    backbone.set_trunk_trainable(False)
    assert not any(p.requires_grad for p in backbone.net.trunk.parameters())
    backbone.set_trunk_trainable(True)
    assert all(p.requires_grad for p in backbone.net.trunk.parameters())


def test_config_errors(tiny_cfg):
    with pytest.raises(ValueError, match="OUTPUT 'single'"):
        build_backbone(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLT_BACKBONE.OUTPUT", "multiscale"))
    with pytest.raises(ValueError, match="SCALE_FACTORS"):
        build_backbone(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLTDET.SCALE_FACTORS", (3.0, 1.0)))
    with pytest.raises(ValueError, match="SQUARE_PAD"):
        build_backbone(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLTDET.SQUARE_PAD", -1))
    # A patch-14 trunk kept at patch 14 has stride 14: no power-of-two pyramid.
    opts = ["MODEL.VLT_BACKBONE.ARCH", "ViT-L-14", "MODEL.VLT_BACKBONE.PATCH_SIZE", 0]
    with pytest.raises(ValueError, match="PATCH_SIZE to 16"):
        build_backbone(tiny_cfg("Base-VLTDet.yaml", *opts))
