"""
Mask2Former's masked-attention transformer decoder ("Masked-attention Mask Transformer for
Universal Image Segmentation", CVPR 2022), and the registry of transformer decoders.

Submodule names follow the official ``MultiScaleMaskedTransformerDecoder`` so that official
checkpoints load unchanged.
"""
from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

from .decoder_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .legacy_keys import rename_legacy_keys
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
    "attention_mask_from_masks",
]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for Mask2Former transformer decoders (the "predictor" of the head).

The registered object is called with ``obj(cfg, in_channels, mask_classification)``, where
``in_channels`` is the width of the pixel decoder's multi-scale maps. It must return an
``nn.Module`` whose ``forward(multi_scale_features, mask_features, query_embed=None,
query_feat=None)`` returns a dict with "pred_logits" [B, Q, K + 1], "pred_masks" [B, Q, h, w]
(h, w of mask_features) and "aux_outputs" (a list of dicts with the same two keys).
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """
    Build the decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``.

    Args:
        cfg (CfgNode): a VLTSeg config.
        in_channels (int): channels of the multi-scale features it attends to.
        mask_classification (bool): predict a class per query (Mask2Former always does).
    """
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def attention_mask_from_masks(mask_logits: Tensor, size: Tuple[int, int], num_heads: int) -> Tensor:
    """
    The masked-attention mask: each query attends only where its current mask prediction is
    foreground (sigmoid >= 0.5) at the resolution of the level it attends to next. A query
    whose mask is empty at that resolution attends everywhere instead of nowhere.

    Args:
        mask_logits (Tensor): [B, Q, H, W] mask predictions.
        size (tuple[int, int]): (h, w) of the level attended to.
        num_heads (int): attention heads (the mask is repeated per head).

    Returns:
        Tensor: bool [B * num_heads, Q, h * w], True where attention is NOT allowed (the
        convention of nn.MultiheadAttention); detached from the graph.
    """
    logits = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    blocked = logits.sigmoid().flatten(2) < 0.5  # [B, Q, hw]
    # Empty-mask reset: an all-True row would give a softmax over nothing (NaN).
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


def _batched_queries(q: Optional[Tensor], default: Tensor, batch_size: int, name: str) -> Tensor:
    """[Q, C] or [B, Q, C] (or None: the learned ``default`` [Q, C]) -> [B, Q, C]."""
    if q is None:
        return default[None].expand(batch_size, -1, -1)
    expected = tuple(default.shape)
    if q.dim() == 2 and tuple(q.shape) == expected:
        return q[None].expand(batch_size, -1, -1)
    if q.dim() == 3 and tuple(q.shape) == (batch_size,) + expected:
        return q
    raise ValueError(
        f"{name} must have shape {expected} or {(batch_size,) + expected}, got {tuple(q.shape)}"
    )


def _legacy_decoder_key(local_key: str) -> str:
    """Pre-version-2 decoder key -> today's: "static_query" became "query_feat"."""
    return local_key.replace("static_query", "query_feat")


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """
    Queries refined by ``dec_layers`` layers of masked cross-attention (to the 3 levels in
    round-robin order, coarsest first), self-attention and FFN; class and mask predictions
    after the initial queries and after every layer (deep supervision).

    State dicts of version < 2 (old model-zoo files) are converted while loading, as official
    Mask2Former does: ``static_query`` -> ``query_feat``.
    """

    # Version of the state-dict layout (official Mask2Former's); older ones are converted.
    _version = 2

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            mask_classification: must be True (Mask2Former classifies every query).
            num_classes: K; the class head predicts K + 1 logits (the last one: "no object").
            hidden_dim: width of the queries.
            num_queries: Q.
            nheads: attention heads.
            dim_feedforward: hidden width of the FFNs.
            dec_layers: number of decoder layers (9 in Mask2Former; the config key
                MODEL.MASK_FORMER.DEC_LAYERS counts one more for the initial prediction).
            pre_norm: pre- instead of post-normalization.
            mask_dim: channels of the mask features (and of the mask embeddings).
            enforce_input_project: add a 1x1 projection even when in_channels == hidden_dim.
            dropout: dropout inside the attention and FFN layers. Official Mask2Former
                hard-codes 0.0 here, so ``from_config`` does not read MODEL.MASK_FORMER.DROPOUT
                (that key reaches only the pixel decoder).
            num_feature_levels: levels attended to in round-robin order.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask_classification")
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d_model=hidden_dim, nhead=nheads, dropout=dropout, pre_norm=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(
                d_model=hidden_dim, nhead=nheads, dropout=dropout, pre_norm=pre_norm
            )
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(
                d_model=hidden_dim,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pre_norm=pre_norm,
            )
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        # Initial query features and query positional embeddings are separate parameters.
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
            else:
                proj = nn.Identity()
            self.input_proj.append(proj)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints older than version 2 (official Mask2Former's hook) name the initial query
        # features "static_query".
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            rename_legacy_keys(state_dict, prefix, _legacy_decoder_key, type(self).__name__)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction from the initial queries as a layer.
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            # No "dropout": official Mask2Former's decoder layers always use 0.0.
        }

    def forward(
        self,
        x: List[Tensor],
        mask_features: Tensor,
        query_embed: Optional[Tensor] = None,
        query_feat: Optional[Tensor] = None,
    ) -> Dict[str, object]:
        """
        Args:
            x (list[Tensor]): ``num_feature_levels`` maps [B, in_channels, H_l, W_l], coarse to
                fine.
            mask_features (Tensor): [B, mask_dim, H, W] per-pixel embeddings.
            query_embed (Tensor, optional): [Q, C] or [B, Q, C]; replaces the learned query
                positional embedding (e.g. Rein's linked queries).
            query_feat (Tensor, optional): [Q, C] or [B, Q, C]; replaces the learned initial
                query features.

        Returns:
            dict: "pred_logits" [B, Q, K + 1] and "pred_masks" [B, Q, H, W] of the last layer;
            "aux_outputs": ``dec_layers`` dicts with the same keys, from the initial queries and
            every layer but the last.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        B = mask_features.shape[0]
        src, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(tuple(feat.shape[-2:]))
            pos.append(self.pe_layer(feat).flatten(2).transpose(1, 2))
            level = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.transpose(1, 2))  # [B, HW, C]

        query_pos = _batched_queries(query_embed, self.query_embed.weight, B, "query_embed")
        output = _batched_queries(query_feat, self.query_feat.weight, B, "query_feat")

        predictions = [self._predict(output, mask_features, sizes[0])]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask = predictions[-1][2]
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            predictions.append(self._predict(output, mask_features, next_size))

        outputs = [{"pred_logits": c, "pred_masks": m} for c, m, _ in predictions]
        return {**outputs[-1], "aux_outputs": outputs[:-1]}

    def _predict(
        self, output: Tensor, mask_features: Tensor, attn_size: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Class logits [B, Q, K + 1], mask logits [B, Q, H, W] and the next attention mask."""
        decoded = self.decoder_norm(output)
        outputs_class = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = attention_mask_from_masks(outputs_mask, attn_size, self.num_heads)
        return outputs_class, outputs_mask, attn_mask
