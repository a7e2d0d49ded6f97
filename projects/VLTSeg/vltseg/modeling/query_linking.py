"""Rein's link from its learnable tokens to the Mask2Former queries ("Stronger, Fewer, & Superior",
arXiv 2312.04265, Sec. 3.3).

Rein learns tokens ``T_i [m, c]`` for every backbone layer ``i``. They are projected per layer,
``Q_i = T_i W_Q + b_Q``, and merged into one set of ``m`` queries,
``Q = [max_i Q_i, mean_i Q_i, Q_N] W'_Q + b'_Q``, which replace the decoder's learned query
positional embeddings and, through one more linear map, its initial query features (official Rein's
``querys2feat`` with ``replace_query_feat=True``, ``query_feat = querys2feat(Q)``), so every query
is tied to one Rein token.
"""
import logging
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["QueryLinker", "build_query_linker"]

logger = logging.getLogger(__name__)


class QueryLinker(nn.Module):
    """
    Turns Rein's per-layer tokens into Mask2Former queries.

    Parameter names and the layout of ``merge``'s input follow the official Rein code
    (``transform``, ``merge``; the three pooled values of one channel are adjacent, i.e. the input
    of ``merge`` is the [C, 3] matrix [max, mean, last] flattened row by row), so its weights load
    unchanged. ``query_feat_proj`` is Rein's ``querys2feat``.
    """

    def __init__(self, *, token_dim: int, query_dim: int, link_query_features: bool = True):
        """
        Args:
            token_dim (int): channels c of Rein's tokens (the backbone width).
            query_dim (int): width of the decoder queries (MODEL.MASK_FORMER.HIDDEN_DIM).
            link_query_features (bool): also derive the initial query features from the linked
                queries, ``query_feat_proj(query_embed)`` (official Rein: on).
        """
        super().__init__()
        self.transform = nn.Linear(token_dim, query_dim)
        self.merge = nn.Linear(3 * query_dim, query_dim)
        self.query_feat_proj = nn.Linear(query_dim, query_dim) if link_query_features else None

    def forward(self, layer_tokens: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            layer_tokens (Tensor): Rein's tokens of every layer, [num_layers, m, c].

        Returns:
            tuple: ``query_embed`` [m, query_dim], and ``query_feat`` [m, query_dim] or None when
            the query features are not linked.
        """
        if layer_tokens.dim() != 3:
            raise ValueError(f"expected layer tokens [num_layers, m, c], got {layer_tokens.shape}")
        per_layer = self.transform(layer_tokens)  # [L, m, D]: Q_i
        pooled = torch.stack(
            [per_layer.max(dim=0).values, per_layer.mean(dim=0), per_layer[-1]], dim=-1
        )  # [m, D, 3]
        query_embed = self.merge(pooled.flatten(1))
        query_feat = self.query_feat_proj(query_embed) if self.query_feat_proj is not None else None
        return query_embed, query_feat


def build_query_linker(cfg, backbone: nn.Module) -> Optional[QueryLinker]:
    """
    Build the linker when ``MODEL.VLTSEG.REIN.LINK_QUERIES`` is on. The tokens come from the
    backbone's ``layer_tokens()`` (the VLT backbone contract: Rein's tokens [num_layers, m, C],
    or None without Rein).

    Keys read: MODEL.VLTSEG.REIN.{LINK_QUERIES, LINK_QUERY_FEATURES},
    MODEL.MASK_FORMER.{NUM_OBJECT_QUERIES, HIDDEN_DIM} (MODEL.VLT_BACKBONE.REIN.NUM_TOKENS and
    FINETUNE are named in the errors).

    Args:
        cfg (CfgNode):
        backbone (nn.Module): the built backbone.

    Returns:
        QueryLinker or None: None when LINK_QUERIES is off.

    Raises:
        ValueError: LINK_QUERIES is on but the backbone has no Rein tokens, or their number
            differs from the number of queries.
    """
    link_cfg = cfg.MODEL.VLTSEG.REIN
    if not link_cfg.LINK_QUERIES:
        return None
    get_tokens = getattr(backbone, "layer_tokens", None)
    tokens = get_tokens() if callable(get_tokens) else None
    if tokens is None:
        raise ValueError(
            "MODEL.VLTSEG.REIN.LINK_QUERIES links Rein's tokens to the queries, but the backbone "
            f"{type(backbone).__name__} has none: set MODEL.VLT_BACKBONE.FINETUNE to 'rein' or "
            "MODEL.VLTSEG.REIN.LINK_QUERIES to False."
        )
    num_queries = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    if tokens.dim() != 3 or tokens.shape[1] != num_queries:
        raise ValueError(
            f"MODEL.VLTSEG.REIN.LINK_QUERIES needs one Rein token per query: "
            f"MODEL.VLT_BACKBONE.REIN.NUM_TOKENS={tokens.shape[1]} must equal "
            f"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES={num_queries} (or turn LINK_QUERIES off)"
        )
    logger.info(
        "Linking %d Rein tokens to the decoder queries%s",
        num_queries,
        " (positional embeddings and features)" if link_cfg.LINK_QUERY_FEATURES else "",
    )
    return QueryLinker(
        token_dim=tokens.shape[-1],
        query_dim=cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
        link_query_features=link_cfg.LINK_QUERY_FEATURES,
    )
