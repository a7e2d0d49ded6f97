"""Rein: learnable-token refinement of a frozen ViT ("Stronger, Fewer, & Superior: Harnessing
Vision Foundation Models for Domain Generalized Semantic Segmentation", arXiv 2312.04265,
CVPR 2024).

Written from the paper's equations and checked against the semantics of the official code
(github.com/w1oves/Rein, ``rein/models/backbones/reins.py``, class ``LoRAReins``).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Rein"]


class Rein(nn.Module):
    """
    Rein's feature refinement, applied after every block of a frozen ViT trunk.

    For layer ``i`` with patch tokens ``f`` [n, c] (prefix tokens such as cls / registers removed):

    * ``T_i = A_i B_i`` [m, c]: m learnable tokens with a low-rank factorization
      (A_i [m, r], B_i [r, c]; one pair per layer).
    * ``S_i = softmax(f T_iᵀ / sqrt(c))`` [n, m]: softmax over the m tokens.
    * ``Δf̄_i = S_i[:, 1:] (T_i[1:] W_T + b_T)`` [n, c].
    * ``Δf_i = (Δf̄_i + f) W_f + b_f``; the output is ``f + s · Δf_i`` with a learnable scalar s.

    ``W_T, b_T`` (``token_proj``), ``W_f, b_f`` (``feat_proj``) and ``s`` (``scale``) are shared by
    all layers.

    Which index is excluded: the *first learnable token* ``T_i[0]`` (0-based; the paper writes
    ``S_i[:, 2:m]`` with 1-based indices, the official code ``attn[:, :, 1:]`` and
    ``tokens[1:, :]``). It is not the cls token, which never enters Rein (see
    ``num_prefix_tokens``). ``T_i[0]`` still takes part in the softmax normalization but its column
    is dropped from the aggregation, so it acts as a learnable "no refinement" slot: a patch whose
    similarity mass goes to ``T_i[0]`` receives only the residual term ``f W_f + b_f``.

    Initialization follows the official code: A and B uniform in ``±sqrt(6 / (3 p² + sqrt(c r)))``
    (Xavier-uniform over a p x p RGB patch, the VPT recipe, with p = 16), both linear layers with
    PyTorch's default init (Kaiming-uniform, a = sqrt(5)), and ``s = scale_init`` (1e-3), so at
    initialization Rein changes the features by about 0.1% and the pre-trained trunk's behaviour is
    kept.

    Parameters with no weight decay (Rein's official optimizer config): the token factors and
    the scale, listed by :meth:`no_weight_decay` (the timm convention that
    :func:`vlt_common.solver.get_param_groups` reads).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        embed_dim: int,
        num_tokens: int = 100,
        rank: int = 16,
        scale_init: float = 1e-3,
        patch_size: int = 16,
    ):
        """
        Args:
            num_layers (int): blocks of the trunk (one token set per block).
            embed_dim (int): c, the trunk width.
            num_tokens (int): m, learnable tokens per layer (at least 2: the first one is not
                aggregated).
            rank (int): r, the rank of ``T_i = A_i B_i``.
            scale_init (float): initial value of the learnable output scale s.
            patch_size (int): patch size p that enters the token initialization bound only.
        """
        super().__init__()
        for key, value, low in (
            ("num_layers", num_layers, 1),
            ("embed_dim", embed_dim, 1),
            ("num_tokens", num_tokens, 2),
            ("rank", rank, 1),
            ("patch_size", patch_size, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"Rein: {key} must be an integer >= {low}, got {value!r}")
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.num_tokens = num_tokens
        self.rank = rank

        self.tokens_a = nn.Parameter(torch.empty(num_layers, num_tokens, rank))
        self.tokens_b = nn.Parameter(torch.empty(num_layers, rank, embed_dim))
        self.token_proj = nn.Linear(embed_dim, embed_dim)
        self.feat_proj = nn.Linear(embed_dim, embed_dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + math.sqrt(embed_dim * rank)))
        nn.init.uniform_(self.tokens_a, -bound, bound)
        nn.init.uniform_(self.tokens_b, -bound, bound)

    @staticmethod
    def num_parameters_formula(num_layers: int, embed_dim: int, num_tokens: int, rank: int) -> int:
        """
        Closed-form parameter count: ``L m r + L r c + 2 (c² + c) + 1`` (token factors A and B,
        the two shared linear layers with biases, the scale).

        Args:
            num_layers (int): L, blocks of the trunk.
            embed_dim (int): c, the trunk width.
            num_tokens (int): m, tokens per layer.
            rank (int): r, rank of the token factorization.

        Returns:
            int
        """
        L, c, m, r = num_layers, embed_dim, num_tokens, rank
        return L * m * r + L * r * c + 2 * (c * c + c) + 1

    def no_weight_decay(self):
        """
        Returns:
            set[str]: names of the parameters trained without weight decay.
        """
        return {"tokens_a", "tokens_b", "scale"}

    def layer_tokens(self) -> torch.Tensor:
        """
        Returns:
            Tensor: ``T_i`` of every layer, [num_layers, num_tokens, embed_dim].
        """
        return torch.bmm(self.tokens_a, self.tokens_b)

    def forward(self, tokens: torch.Tensor, layer: int, num_prefix_tokens: int) -> torch.Tensor:
        """
        Args:
            tokens (Tensor): output of block ``layer``, [B, N, C], prefix tokens first.
            layer (int): 0-based block index.
            num_prefix_tokens (int): leading tokens (cls, registers) returned unchanged.

        Returns:
            Tensor: [B, N, C], the prefix tokens untouched and the patch tokens refined.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"Rein: expected tokens [B, N, {self.embed_dim}], got {tuple(tokens.shape)}"
            )
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"Rein: layer {layer} out of range [0, {self.num_layers})")
        if not 0 <= num_prefix_tokens < tokens.shape[1]:
            raise ValueError(
                f"Rein: num_prefix_tokens={num_prefix_tokens} must be in [0, {tokens.shape[1]})"
            )
        prefix, feats = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
        layer_tokens = self.tokens_a[layer] @ self.tokens_b[layer]  # [m, C]
        sim = torch.einsum("bnc,mc->bnm", feats, layer_tokens) * self.embed_dim**-0.5
        sim = F.softmax(sim, dim=-1)
        # the first learnable token is normalized over but not aggregated (class docstring)
        delta = torch.einsum("bnm,mc->bnc", sim[..., 1:], self.token_proj(layer_tokens[1:]))
        delta = self.feat_proj(delta + feats) * self.scale
        return torch.cat([prefix, feats + delta], dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, embed_dim={self.embed_dim}, "
            f"num_tokens={self.num_tokens}, rank={self.rank}"
        )
