"""
The deformable transformer encoder of Mask2Former's pixel decoder: multi-scale deformable
self-attention over the flattened levels, then an FFN, repeated. Submodule names follow the
official implementation so that its checkpoints load unchanged.
"""
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .ms_deform_attn import MSDeformAttn

__all__ = ["DeformableEncoderLayer", "DeformableTransformerEncoder"]


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, residual, LayerNorm; FFN, residual, LayerNorm."""

    def __init__(
        self,
        *,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(
            d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: List[Tuple[int, int]],
        level_start_index: List[int],
    ) -> Tensor:
        """
        Args:
            src (Tensor): [B, S, C] features of all levels; pos (Tensor): [B, S, C] their
                position + level embeddings; reference_points (Tensor): [B, S, L, 2].
            spatial_shapes (list[tuple[int, int]]): (H, W) of the L levels;
            level_start_index (list[int]): where each level starts along S. Python ints, so
                that no layer reads them from the device.

        Returns:
            Tensor: [B, S, C].
        """
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class _EncoderStack(nn.Module):
    """The layers (official name ``encoder.layers``) and the reference points they share."""

    def __init__(self, layers: List[DeformableEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: List[Tuple[int, int]], batch_size: int, device) -> Tensor:
        """[B, S, L, 2]: every pixel's center as (x, y) in [0, 1], the same for all levels
        (inputs are never masked, so every level covers the whole image)."""
        points = []
        for h, w in spatial_shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        points = torch.cat(points, 0)
        return points[None, :, None].expand(batch_size, -1, len(spatial_shapes), -1)

    def forward(self, src, pos, spatial_shapes, level_start_index):
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class DeformableTransformerEncoder(nn.Module):
    """
    Flattens the levels, adds a learned embedding per level to their position encodings and
    runs the encoder layers (official name of this module in the pixel decoder: ``transformer``).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ):
        """
        Args:
            d_model: width of the features.
            nhead: deformable attention heads.
            num_encoder_layers: number of layers.
            dim_feedforward: hidden width of the FFNs.
            dropout: dropout after attention and inside / after the FFN.
            num_feature_levels: number of levels attended over.
            enc_n_points: sampling points per head and level.
        """
        super().__init__()
        self.encoder = _EncoderStack(
            [
                DeformableEncoderLayer(
                    d_model=d_model,
                    d_ffn=dim_feedforward,
                    dropout=dropout,
                    n_levels=num_feature_levels,
                    n_heads=nhead,
                    n_points=enc_n_points,
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: List[Tensor], pos_embeds: List[Tensor]
    ) -> Tuple[Tensor, List[Tuple[int, int]], List[int]]:
        """
        Args:
            srcs (list[Tensor]): L maps [B, C, H_l, W_l].
            pos_embeds (list[Tensor]): their position encodings, same shapes.

        Returns:
            tuple: memory [B, S, C] (S = sum of H_l * W_l, levels in input order),
            spatial_shapes (list of L (H, W)) and level_start_index (list of L ints): Python
            ints taken from the tensor shapes, never read back from the device.
        """
        if len(srcs) != self.level_embed.shape[0]:
            raise ValueError(f"expected {self.level_embed.shape[0]} levels, got {len(srcs)}")
        flat, flat_pos = [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            flat.append(src.flatten(2).transpose(1, 2))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(flat, 1)
        pos_flatten = torch.cat(flat_pos, 1)
        spatial_shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        level_start_index = [0]
        for h, w in spatial_shapes[:-1]:
            level_start_index.append(level_start_index[-1] + h * w)
        memory = self.encoder(src_flatten, pos_flatten, spatial_shapes, level_start_index)
        return memory, spatial_shapes, level_start_index
