"""VLTSeg: Mask2Former with a DenseCLIP-style text head on CLIP / EVA-CLIP ViT backbones."""
from .config import add_vltseg_config

__all__ = ["add_vltseg_config"]
