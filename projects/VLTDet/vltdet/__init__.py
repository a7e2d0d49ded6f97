"""VLTDet: ViTDet detection (simple feature pyramid, Mask / Cascade Mask R-CNN heads, large-scale
jitter, layer-wise lr decay) on VLT's CLIP / EVA-CLIP ViT backbones.

Importing the package registers the backbone builder ``build_clip_vit_sfp_backbone``
(``MODEL.BACKBONE.NAME``), the ``"detection_lsj"`` mapper (``INPUT.DATASET_MAPPER_NAME``) and its
config keys (:func:`add_vltdet_config`, applied by ``vlt_common.engine.get_vlt_cfg``).
"""
from vlt_common.config import register_project_config

from .backbone import VLTSimpleFeaturePyramid, build_clip_vit_sfp_backbone
from .config import add_vltdet_config
from .mapper import LSJDatasetMapper, build_lsj_augmentation

register_project_config("vltdet", add_vltdet_config)

__all__ = [
    "add_vltdet_config",
    "build_clip_vit_sfp_backbone",
    "build_lsj_augmentation",
    "LSJDatasetMapper",
    "VLTSimpleFeaturePyramid",
]
