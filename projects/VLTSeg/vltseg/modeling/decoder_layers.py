"""
Building blocks of Mask2Former's masked-attention transformer decoder. Attribute names follow
the official implementation (``self_attn``, ``multihead_attn``, ``linear1``, ``norm``, ...).

All layers take batch-first tensors [B, Q, C]; ``pre_norm`` selects pre- or post-normalization.
"""
from typing import Optional

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MLP"]


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


def _xavier_init(module: nn.Module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among the queries, with the query positional embedding added to q and k."""

    def __init__(self, *, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            tgt (Tensor): [B, Q, C] query features; query_pos (Tensor): [B, Q, C] or None.

        Returns:
            Tensor: [B, Q, C].
        """
        x = self.norm(tgt) if self.pre_norm else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.pre_norm else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Queries attend to image features; positions are added to queries and keys."""

    def __init__(self, *, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_mask: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            tgt (Tensor): [B, Q, C] queries.
            memory (Tensor): [B, HW, C] image features; pos (Tensor): [B, HW, C] their positions.
            memory_mask (Tensor): bool [B * nhead, Q, HW], True where a query may NOT attend.
            query_pos (Tensor): [B, Q, C].

        Returns:
            Tensor: [B, Q, C].
        """
        x = self.norm(tgt) if self.pre_norm else tgt
        attn = self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attn)
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward network with a residual connection."""

    def __init__(
        self, *, d_model: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        """[B, Q, C] -> [B, Q, C]."""
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """A stack of Linear layers with ReLU between them (official name of the list: ``layers``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
