"""VLT's shared modeling code. Importing it registers the backbones in Detectron2's registries."""
from . import backbone  # noqa: F401  (registration)
from .backbone import CLIPViTBackbone, build_clip_vit_backbone

__all__ = ["CLIPViTBackbone", "build_clip_vit_backbone"]
