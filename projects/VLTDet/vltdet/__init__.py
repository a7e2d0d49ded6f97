"""VLTDet: ViTDet detection on CLIP / EVA-CLIP ViT backbones."""
