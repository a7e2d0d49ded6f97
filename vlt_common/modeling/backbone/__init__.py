"""ViT backbones from vision-language and vision foundation models (open_clip and timm trunks).

Importing this package registers ``build_clip_vit_backbone`` in Detectron2's BACKBONE_REGISTRY.
"""
from .clip_vit import CLIPViTBackbone, build_clip_vit_backbone, default_out_indices
from .contract import AdapterParameters, ReinTokenSource, VLTBackbone
from .conversion import PATCH_RESAMPLE_MODES
from .neck import MultiScaleNeck
from .trunk_adapter import TrunkAdapter, get_trunk_adapter, prepare_trunk, register_trunk_adapter
from .trunk_builder import build_trunk, expected_weights
from .weights import TrunkLoadReport, load_trunk_state_dict, read_checkpoint

__all__ = [
    "CLIPViTBackbone",
    "build_clip_vit_backbone",
    "default_out_indices",
    "VLTBackbone",
    "ReinTokenSource",
    "AdapterParameters",
    "PATCH_RESAMPLE_MODES",
    "MultiScaleNeck",
    "TrunkAdapter",
    "get_trunk_adapter",
    "register_trunk_adapter",
    "prepare_trunk",
    "build_trunk",
    "expected_weights",
    "TrunkLoadReport",
    "load_trunk_state_dict",
    "read_checkpoint",
]
