"""VLTSeg: Mask2Former with a DenseCLIP text head on CLIP / EVA-CLIP ViT backbones.

Importing the package registers its components: the Mask2Former head and modules
(``vltseg.modeling``), the ``VLTSeg`` meta-architecture, the ``"semantic_dg"`` dataset mapper, and
VLT's shared ViT backbone (``build_clip_vit_backbone``) that the VLTSeg configs name.
"""
import vlt_common.modeling  # noqa: F401  (registers build_clip_vit_backbone)

from . import data, modeling  # noqa: F401  (registration)
from .config import add_vltseg_config
from .inference import SlidingWindow, dense_inference
from .meta_arch import VLTSeg

__all__ = ["add_vltseg_config", "VLTSeg", "SlidingWindow", "dense_inference"]
