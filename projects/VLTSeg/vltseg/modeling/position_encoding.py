"""Sine position encoding of feature-map pixels (DETR's, as Mask2Former uses it)."""
import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """
    Fixed sine/cosine encoding of every pixel's (y, x) position, "Attention Is All You Need"
    generalized to 2D. Has no parameters or buffers, so checkpoints never contain it.
    """

    def __init__(
        self, *, num_pos_feats: int = 64, temperature: float = 10000.0, normalize: bool = True
    ):
        """
        Args:
            num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels
                (first the y half, then the x half).
            temperature: base of the geometric progression of wavelengths.
            normalize: scale positions to (0, 2*pi] over the map (Mask2Former always does);
                otherwise positions are pixel counts starting at 1.
        """
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi

    def _encode_axis(self, length: int, device) -> Tensor:
        """[length, num_pos_feats] encoding of positions 1..length along one axis."""
        position = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            # Same expression (and float rounding) as DETR's cumsum-based version.
            position = position / (position[-1:] + 1e-6) * self.scale
        index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        pair = torch.div(index, 2, rounding_mode="floor")
        dim_t = self.temperature ** (2 * pair / self.num_pos_feats)
        phase = position[:, None] / dim_t
        # Interleave sin (even channels) and cos (odd channels).
        return torch.stack((phase[:, 0::2].sin(), phase[:, 1::2].cos()), dim=2).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x (Tensor): [B, C, H, W]; only its shape and device are used (no padding mask:
                like official Mask2Former, padded pixels get positions too).

        Returns:
            Tensor: [B, 2 * num_pos_feats, H, W] in float32.
        """
        B, _, H, W = x.shape
        pos_y = self._encode_axis(H, x.device)  # [H, F]
        pos_x = self._encode_axis(W, x.device)  # [W, F]
        F_ = self.num_pos_feats
        pos = torch.cat(
            (pos_y.t()[:, :, None].expand(F_, H, W), pos_x.t()[:, None, :].expand(F_, H, W)), dim=0
        )
        return pos[None].expand(B, -1, -1, -1)
