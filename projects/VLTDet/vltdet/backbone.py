"""ViTDet's simple feature pyramid over VLT's shared single-scale ViT backbone.

Detectron2's :class:`SimpleFeaturePyramid` does the work; the subclass here only

- reports its padding constraints under the key ``ImageList.from_tensors`` reads (Detectron2 spells
  it ``size_divisiblity``, so without a square pad batches are not padded at all: the trunk
  rejects a 64x95 batch, and a 64x80 one gives a floor-sized p5 that no longer covers the image);
- forwards VLT's backbone contract of the wrapped trunk (``num_layers``, ``layer_id`` for
  layer-wise lr decay, ``set_trunk_trainable`` for the frozen-backbone warm-up; see
  ``vlt_common.modeling.backbone.contract``), with the trunk's parameters under ``net.``.
"""
import math

from detectron2.modeling import BACKBONE_REGISTRY, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from vlt_common.modeling.backbone import build_clip_vit_backbone

__all__ = ["VLTSimpleFeaturePyramid", "build_clip_vit_sfp_backbone"]

# The single map the trunk must return (MODEL.VLT_BACKBONE.OUTPUT "single").
_IN_FEATURE = "last_feat"
# The rescalings SimpleFeaturePyramid implements (deconvolutions, identity, max-pool).
_SUPPORTED_SCALES = (4.0, 2.0, 1.0, 0.5)


class VLTSimpleFeaturePyramid(SimpleFeaturePyramid):
    """
    :class:`SimpleFeaturePyramid` with working divisibility padding and VLT's backbone contract
    (see :class:`vlt_common.modeling.backbone.CLIPViTBackbone`) forwarded to the trunk.

    Constructor arguments are those of :class:`SimpleFeaturePyramid`; ``net`` must return a map at
    a power-of-two stride (``MODEL.VLT_BACKBONE.PATCH_SIZE``: 16 for the released trunks, whose
    patch-14 encoders are resampled to patch 16; 8 for the tiny SynthDG demo).
    """

    def __init__(self, net, in_feature, **kwargs):
        stride = net.output_shape()[in_feature].stride
        if stride & (stride - 1):
            raise ValueError(
                f"The simple feature pyramid needs a power-of-two backbone stride, got {stride} "
                f"for feature '{in_feature}'. Set MODEL.VLT_BACKBONE.PATCH_SIZE to 16."
            )
        super().__init__(net, in_feature, **kwargs)

    @property
    def size_divisibility(self):
        """int: the coarsest stride of the pyramid's scaled maps (32 for p2..p5)."""
        return self._size_divisibility

    @property
    def padding_constraints(self):
        """dict: ``{"size_divisibility": int, "square_size": int}`` as
        :meth:`ImageList.from_tensors` expects (square_size 0 means no square padding)."""
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    @property
    def num_layers(self):
        """int: number of transformer blocks of the wrapped trunk."""
        return self.net.num_layers

    def layer_id(self, name):
        """
        Layer id of a parameter for layer-wise lr decay.

        Args:
            name (str): parameter name relative to this module (``"net.<...>"`` for the trunk,
                ``"simfp_<k>.<...>"`` for the pyramid).

        Returns:
            int: the trunk's id for its own parameters; ``num_layers + 1`` (full lr, like the
            heads) for the pyramid.
        """
        prefix = "net."
        if name.startswith(prefix):
            return self.net.layer_id(name[len(prefix) :])
        return self.num_layers + 1

    def set_trunk_trainable(self, flag):
        """
        Switch ``requires_grad`` of the trainable trunk parameters (frozen-backbone warm-up); the
        pyramid always trains.

        Args:
            flag (bool):
        """
        self.net.set_trunk_trainable(flag)


@BACKBONE_REGISTRY.register()
def build_clip_vit_sfp_backbone(cfg, input_shape):
    """
    Build the shared CLIP / EVA-CLIP ViT (``MODEL.VLT_BACKBONE``) with a ViTDet pyramid on top.

    Reads ``MODEL.VLTDET.{OUT_CHANNELS, SCALE_FACTORS, NORM, SQUARE_PAD}``; the trunk must be set
    to ``MODEL.VLT_BACKBONE.OUTPUT "single"`` with ``OUT_FEATURES ["last_feat"]``.

    Args:
        cfg (CfgNode): the config.
        input_shape (ShapeSpec): image channels.

    Returns:
        VLTSimpleFeaturePyramid: maps p2..p6 for patch 16 and the default scale factors; in
        general one map per scale factor at stride patch / factor, plus the max-pool of the
        coarsest.
    """
    bb = cfg.MODEL.VLT_BACKBONE
    if bb.OUTPUT != "single" or list(bb.OUT_FEATURES) != [_IN_FEATURE]:
        raise ValueError(
            "VLTDet's pyramid reads the single patch-stride map of the trunk: set "
            f"MODEL.VLT_BACKBONE.OUTPUT 'single' and OUT_FEATURES ['{_IN_FEATURE}'] "
            f"(got {bb.OUTPUT!r} and {list(bb.OUT_FEATURES)})."
        )
    square_pad = cfg.MODEL.VLTDET.SQUARE_PAD
    if square_pad < 0:
        raise ValueError(f"MODEL.VLTDET.SQUARE_PAD must be >= 0, got {square_pad}")
    scale_factors = tuple(float(s) for s in cfg.MODEL.VLTDET.SCALE_FACTORS)
    if not scale_factors or not set(scale_factors) <= set(_SUPPORTED_SCALES):
        raise ValueError(
            f"MODEL.VLTDET.SCALE_FACTORS must be taken from {_SUPPORTED_SCALES}, got "
            f"{scale_factors}"
        )
    net = build_clip_vit_backbone(cfg, input_shape)
    # The extra level max-pools the coarsest scaled map (p5 for patch 16 and scale 0.5).
    top_block = LastLevelMaxPool()
    coarsest = net.output_shape()[_IN_FEATURE].stride / min(scale_factors)
    top_block.in_feature = f"p{int(math.log2(coarsest))}"
    return VLTSimpleFeaturePyramid(
        net,
        _IN_FEATURE,
        out_channels=cfg.MODEL.VLTDET.OUT_CHANNELS,
        scale_factors=scale_factors,
        top_block=top_block,
        norm=cfg.MODEL.VLTDET.NORM,
        square_pad=square_pad,
    )
