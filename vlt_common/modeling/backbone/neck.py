"""ViTDet-style rescaling of single-stride ViT maps into a multi-scale set."""
from typing import Dict

import torch
from detectron2.layers import get_norm
from torch import nn

__all__ = ["MultiScaleNeck"]


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


class MultiScaleNeck(nn.Module):
    """
    Rescale ViT maps taken at the patch stride, one learnable path per output level, as in
    ViTDet's simple feature pyramid and BEiT / EVA-02 segmentation: 4x = two 2x2 transposed
    convolutions with a norm and GELU between them, 2x = one transposed convolution,
    1x = identity, 0.5x = 2x2 max-pooling. The width stays C at every level.
    """

    def __init__(self, *, channels: int, scales: Dict[str, float], norm: str = "LN"):
        """
        Args:
            channels (int): width C of the input and output maps.
            scales (dict[str, float]): output name -> rescaling factor (4, 2, 1 or 0.5).
            norm (str): Detectron2 norm name between the two deconvolutions of the 4x path
                ("LN" is a channels-first LayerNorm that works with any batch size).
        """
        super().__init__()
        self.scales = dict(scales)
        self.levels = nn.ModuleDict(
            {name: _rescale_module(channels, s, norm) for name, s in self.scales.items()}
        )

    def forward(self, maps: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            maps (dict[str, Tensor]): output name -> [B, C, h, w] map at the patch stride.

        Returns:
            dict[str, Tensor]: output name -> [B, C, h * s, w * s] for its factor s (floor for
            0.5).
        """
        return {name: self.levels[name](maps[name]) for name in self.scales}
