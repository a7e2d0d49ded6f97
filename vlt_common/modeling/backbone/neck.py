"""Rescaling of single-stride ViT maps into a multi-scale set: ViTDet's learnable paths or Rein's
parameter-free bilinear interpolation."""
from typing import Dict

import torch
from detectron2.layers import get_norm
from torch import nn
from torch.nn import functional as F

__all__ = ["MultiScaleNeck", "NECK_TYPES"]

# MODEL.VLT_BACKBONE.NECK values.
NECK_TYPES = ("learnable", "interpolate")


def _rescale_module(channels: int, scale: float, norm: str) -> nn.Module:
    if scale == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            get_norm(norm, channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if scale == 1.0:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2)
    raise ValueError(f"Unsupported rescaling factor {scale}; expected one of 4, 2, 1, 0.5.")


class _Interpolate(nn.Module):
    """Bilinear resizing by a fixed factor (``align_corners=False``), no parameters."""

    def __init__(self, scale: float):
        super().__init__()
        if scale not in (4.0, 2.0, 1.0, 0.5):
            raise ValueError(f"Unsupported rescaling factor {scale}; expected one of 4, 2, 1, 0.5.")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class MultiScaleNeck(nn.Module):
    """
    Rescale ViT maps taken at the patch stride, one path per output level. The width stays C at
    every level.

    * ``"learnable"`` (ViTDet's simple feature pyramid, BEiT / EVA-02 segmentation, VLTSeg):
      4x = two 2x2 transposed convolutions with a norm and GELU between them, 2x = one transposed
      convolution, 1x = identity, 0.5x = 2x2 max-pooling.
    * ``"interpolate"`` (official Rein, ``reins_dinov2.py`` / ``reins_eva_02.py``): bilinear
      interpolation by the factor (``align_corners=False``), 1x = identity; no parameters.
    """

    def __init__(
        self, *, channels: int, scales: Dict[str, float], norm: str = "LN", mode: str = "learnable"
    ):
        """
        Args:
            channels (int): width C of the input and output maps.
            scales (dict[str, float]): output name -> rescaling factor (4, 2, 1 or 0.5).
            norm (str): Detectron2 norm name between the two deconvolutions of the learnable 4x
                path ("LN" is a channels-first LayerNorm that works with any batch size).
            mode (str): "learnable" or "interpolate" (see the class docstring).
        """
        super().__init__()
        if mode not in NECK_TYPES:
            raise ValueError(f"MODEL.VLT_BACKBONE.NECK must be one of {NECK_TYPES}, got {mode!r}.")
        self.mode = mode
        self.scales = dict(scales)
        if mode == "learnable":
            paths = {name: _rescale_module(channels, s, norm) for name, s in self.scales.items()}
        else:
            paths = {name: _Interpolate(s) for name, s in self.scales.items()}
        self.levels = nn.ModuleDict(paths)

    def forward(self, maps: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            maps (dict[str, Tensor]): output name -> [B, C, h, w] map at the patch stride.

        Returns:
            dict[str, Tensor]: output name -> [B, C, h * s, w * s] for its factor s (floor for
            0.5).
        """
        return {name: self.levels[name](maps[name]) for name in self.scales}
