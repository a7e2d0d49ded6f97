"""Config keys of VLTDet: ViTDet's simple feature pyramid on the shared ViT backbone, and the
large-scale-jitter (LSJ) training augmentation.

Call after :func:`vlt_common.config.add_vlt_common_config`. The detection heads use Detectron2's own
keys (``MODEL.RPN``, ``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD``, ``MODEL.ROI_MASK_HEAD``,
``MODEL.ROI_BOX_CASCADE_HEAD``); ``configs/Base-VLTDet.yaml`` sets them to the ViTDet recipe, so
this function changes no existing default and adds only new keys.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_vltdet_config"]


def add_vltdet_config(cfg):
    """
    Add the keys under ``MODEL.VLTDET`` and ``INPUT.LSJ``.

    Args:
        cfg (CfgNode): a Detectron2 config; edited in place.
    """
    # ---------------------------------------------------------------------------------------------
    # Simple feature pyramid (ViTDet) over the single-scale backbone output "last_feat"
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.VLTDET = CN()
    # Channels of every pyramid map p2..p6 (and so the input width of the RPN and ROI heads).
    cfg.MODEL.VLTDET.OUT_CHANNELS = 256
    # Rescaling factors applied to the stride-16 map, one pyramid level each: 4.0 and 2.0 are
    # transposed convolutions, 1.0 the identity, 0.5 a max-pool. (4, 2, 1, 0.5) gives p2..p5 at
    # strides 4/8/16/32; p6 (stride 64) is always added by max-pooling the coarsest level.
    cfg.MODEL.VLTDET.SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)
    # Normalization inside the pyramid ("LN": channel-wise LayerNorm, as in ViTDet; "" for none).
    cfg.MODEL.VLTDET.NORM = "LN"
    # Pad every batch to a SQUARE_PAD x SQUARE_PAD canvas (pixels; ViTDet pads to the LSJ size,
    # 1024). 0 pads only to the pyramid's size divisibility (the coarsest stride, 32 by default).
    # Images larger than SQUARE_PAD are an error, so keep it >= INPUT.LSJ.IMAGE_SIZE and
    # >= INPUT.MAX_SIZE_TEST.
    cfg.MODEL.VLTDET.SQUARE_PAD = 0

    # ---------------------------------------------------------------------------------------------
    # Large-scale jitter ("detection_lsj" mapper)
    # ---------------------------------------------------------------------------------------------
    cfg.INPUT.LSJ = CN()
    # Side of the square training crop in pixels (ViTDet: 1024). The image is first resized to
    # fit in a square of side IMAGE_SIZE * s (aspect ratio kept), s ~ U(MIN_SCALE, MAX_SCALE),
    # then a random IMAGE_SIZE x IMAGE_SIZE window is cropped (smaller images are not padded
    # here; the model pads the batch, see MODEL.VLTDET.SQUARE_PAD).
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    # Range of the random scale s.
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0
