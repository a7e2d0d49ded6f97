"""VLTSeg: Mask2Former with a DenseCLIP text head on CLIP / EVA-CLIP ViT backbones.

Importing the package registers its components: the Mask2Former head and modules
(``vltseg.modeling``), the ``VLTSeg`` meta-architecture, the ``"semantic_dg"`` dataset mapper, and
VLT's shared ViT backbone (``build_clip_vit_backbone``) that the VLTSeg configs name, and its
config keys (:func:`add_vltseg_config`, applied by ``vlt_common.engine.get_vlt_cfg``).
"""
import vlt_common.modeling  # noqa: F401  (registers build_clip_vit_backbone)
from vlt_common.config import register_project_config

from . import data, modeling  # noqa: F401  (registration)
from .config import add_vltseg_config
from .meta_arch import VLTSeg

register_project_config("vltseg", add_vltseg_config)

__all__ = ["add_vltseg_config", "VLTSeg"]
