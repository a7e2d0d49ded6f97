"""DenseCLIP-style pixel-text matching head: VLTSeg's optional auxiliary loss L_PTM.

DenseCLIP (Rao et al., CVPR 2022, arXiv 2112.01518), as VLTSeg uses it:

1. Language side: learnable context vectors (8 by default) are placed before every class name and
   run through the *frozen* CLIP text encoder, giving text embeddings ``t [K, D]``.
2. Context-aware prompting: a small pre-norm transformer decoder (3 layers, width 256, 4 heads)
   lets the text embeddings attend to the visual tokens; its output is added with a learnable
   per-channel residual scale gamma (initialized to 1e-4): ``t' = t + gamma * decoder(t, v)``.
3. Pixel-text score map ``s = cos(v_pixel, t') [B, K, h, w]``; ``L_PTM = CE(s / tau, labels)``
   with tau = 0.07 and weight 0.4. The score map is upsampled (bilinear) to the label size before
   the loss, as mmsegmentation's decode heads (DenseCLIP's ``IdentityHead``) do.
4. Optionally the (un-scaled) score map is concatenated to one backbone level before the pixel
   decoder, as DenseCLIP does for its last level.

Where VLTSeg differs from DenseCLIP: the visual embeddings are a learnable 1x1 projection of one
backbone level (``IN_FEATURE``) to the text width D (DenseCLIP uses CLIP's own attention-pooling
projection, which a fine-tuned ViT backbone does not provide), and the global visual token that
DenseCLIP prepends to the visual context is the mean of the projected pixels.
"""
import logging
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["ContextDecoder", "DenseCLIPTextHead"]

logger = logging.getLogger(__name__)


class _ContextDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention over the text queries, cross-attention to the
    visual tokens, MLP (4x width, GELU)."""

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.norm1(text)
        text = text + self.self_attn(q, q, q, need_weights=False)[0]
        q = self.norm2(text)
        text = text + self.cross_attn(q, memory, memory, need_weights=False)[0]
        return text + self.dropout(self.mlp(self.norm3(text)))


class ContextDecoder(nn.Module):
    """
    DenseCLIP's context decoder: text embeddings [B, K, D] attend to visual tokens [B, N, D] and
    return an update [B, K, D] (to be scaled by gamma and added by the caller).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        width: int = 256,
        num_heads: int = 4,
        num_layers: int = 3,
        dropout: float = 0.1,
    ):
        """
        Args:
            embed_dim (int): D, the width of text and visual embeddings.
            width (int): internal width of the decoder.
            num_heads (int): attention heads.
            num_layers (int): decoder layers.
            dropout (float): dropout in attention and MLP.
        """
        super().__init__()
        self.memory_proj = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width), nn.LayerNorm(width)
        )
        self.text_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.layers = nn.ModuleList(
            [_ContextDecoderLayer(width, num_heads, dropout) for _ in range(num_layers)]
        )
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        # DenseCLIP's initialization: truncated normal (std 0.02) linear weights, zero biases.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """
        Args:
            text (Tensor): [B, K, D].
            visual (Tensor): [B, N, D].

        Returns:
            Tensor: [B, K, D].
        """
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.layers:
            x = layer(x, memory)
        return self.out_proj(x)


class DenseCLIPTextHead(nn.Module):
    """
    Pixel-text matching on one backbone level (see the module docstring).

    Use: ``score_map = head(features)``; in training ``head.losses(score_map, sem_seg)``; with
    ``concat_to`` set, ``features = head.concat_score_map(features, score_map)`` before the pixel
    decoder, whose input shape is :meth:`head_input_shape`.

    Not registered in ``SEM_SEG_HEADS_REGISTRY``: it is an auxiliary head of
    :class:`vltseg.VLTSeg`, not a segmentation head with that registry's call contract.
    """

    @configurable
    def __init__(
        self,
        *,
        text_encoder: nn.Module,
        class_names: Sequence[str],
        in_feature: str,
        in_channels: int,
        context_length: int = 8,
        refine_layers: int = 3,
        refine_width: int = 256,
        refine_heads: int = 4,
        dropout: float = 0.1,
        gamma_init: float = 1e-4,
        temperature: float = 0.07,
        loss_weight: float = 0.4,
        ignore_value: int = 255,
        concat_to: str = "",
    ):
        """
        Args:
            text_encoder (nn.Module): frozen CLIP text tower with the interface of
                :class:`vlt_common.modeling.text_encoder.CLIPTextEncoder` (``width``,
                ``embed_dim``, ``encode_with_context(context [n, width], class_names) -> [K, D]``).
            class_names (sequence[str]): the K class names, in label order.
            in_feature (str): backbone level whose pixels are matched with the text.
            in_channels (int): channels of that level.
            context_length (int): number of learnable context vectors.
            refine_layers, refine_width, refine_heads, dropout: the context decoder.
            gamma_init (float): initial residual scale of the text refinement.
            temperature (float): tau of ``score / tau`` in the loss.
            loss_weight (float): lambda of L_PTM.
            ignore_value (int): label value left out of the loss.
            concat_to (str): backbone level that gets the score map concatenated ("" disables).
        """
        super().__init__()
        if context_length <= 0:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.text_encoder = text_encoder
        self.class_names = list(class_names)
        self.in_feature = in_feature
        self.concat_to = concat_to
        self.temperature = temperature
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        embed_dim = text_encoder.embed_dim
        # DenseCLIP draws the context vectors from a (truncated) standard normal.
        self.contexts = nn.Parameter(torch.empty(context_length, text_encoder.width))
        nn.init.trunc_normal_(self.contexts)
        self.visual_proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.context_decoder = ContextDecoder(
            embed_dim=embed_dim,
            width=refine_width,
            num_heads=refine_heads,
            num_layers=refine_layers,
            dropout=dropout,
        )
        self.gamma = nn.Parameter(torch.full((embed_dim,), float(gamma_init)))
        logger.info(
            "Pixel-text matching on %r: %d classes, %d context vectors, L_PTM weight %g%s",
            in_feature,
            len(self.class_names),
            context_length,
            loss_weight,
            f", score map concatenated to {concat_to!r}" if concat_to else "",
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], class_names: Sequence[str]):
        from vlt_common.modeling.text_encoder import CLIPTextEncoder

        head_cfg = cfg.MODEL.VLTSEG.TEXT_HEAD
        if head_cfg.IN_FEATURE not in input_shape:
            raise KeyError(
                f"MODEL.VLTSEG.TEXT_HEAD.IN_FEATURE={head_cfg.IN_FEATURE!r} is not a backbone "
                f"output; the backbone gives {sorted(input_shape)}"
            )
        if head_cfg.CONCAT_TO and head_cfg.CONCAT_TO not in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES:
            raise KeyError(
                f"MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO={head_cfg.CONCAT_TO!r} is not one of the maps "
                f"the pixel decoder reads (MODEL.SEM_SEG_HEAD.IN_FEATURES="
                f"{list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)})"
            )
        text_encoder = CLIPTextEncoder(
            head_cfg.TEXT_ARCH,
            pretrained=head_cfg.TEXT_PRETRAINED,
            width=head_cfg.TEXT_WIDTH,
            layers=head_cfg.TEXT_LAYERS,
            heads=head_cfg.TEXT_HEADS,
        )
        return {
            "text_encoder": text_encoder,
            "class_names": class_names,
            "in_feature": head_cfg.IN_FEATURE,
            "in_channels": input_shape[head_cfg.IN_FEATURE].channels,
            "context_length": head_cfg.CONTEXT_LENGTH,
            "refine_layers": head_cfg.REFINE_LAYERS,
            "gamma_init": head_cfg.GAMMA_INIT,
            "temperature": head_cfg.TEMPERATURE,
            "loss_weight": head_cfg.LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "concat_to": head_cfg.CONCAT_TO,
        }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def head_input_shape(self, input_shape: Dict[str, ShapeSpec]) -> Dict[str, ShapeSpec]:
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.

        Returns:
            dict[str, ShapeSpec]: the shapes after :meth:`concat_score_map` (K more channels on
            ``concat_to``).
        """
        shapes = dict(input_shape)
        if self.concat_to:
            spec = shapes[self.concat_to]
            shapes[self.concat_to] = ShapeSpec(
                channels=spec.channels + self.num_classes,
                height=spec.height,
                width=spec.width,
                stride=spec.stride,
            )
        return shapes

    def text_embeddings(self, visual: torch.Tensor) -> torch.Tensor:
        """
        Context-aware text embeddings.

        Args:
            visual (Tensor): projected visual embeddings [B, D, h, w].

        Returns:
            Tensor: [B, K, D], not normalized.
        """
        text = self.text_encoder.encode_with_context(self.contexts, self.class_names)  # [K, D]
        text = text.unsqueeze(0).expand(visual.shape[0], -1, -1)
        pixels = visual.flatten(2).transpose(1, 2)  # [B, hw, D]
        # DenseCLIP's visual context is [global token, pixel tokens].
        context = torch.cat([pixels.mean(dim=1, keepdim=True), pixels], dim=1)
        return text + self.gamma * self.context_decoder(text, context)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs; ``in_feature`` is [B, C, h, w].

        Returns:
            Tensor: cosine pixel-text score map [B, K, h, w] (values in [-1, 1], not divided by
            the temperature).
        """
        visual = self.visual_proj(features[self.in_feature])
        text = self.text_embeddings(visual)
        return torch.einsum(
            "bdhw,bkd->bkhw", F.normalize(visual, dim=1), F.normalize(text, dim=-1)
        )

    def concat_score_map(
        self, features: Dict[str, torch.Tensor], score_map: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs.
            score_map (Tensor): [B, K, h, w] from :meth:`forward`.

        Returns:
            dict[str, Tensor]: a copy of ``features`` where ``concat_to`` has the score map
            (resized bilinearly to that level if needed) appended to its channels.
        """
        features = dict(features)
        target = features[self.concat_to]
        if score_map.shape[-2:] != target.shape[-2:]:
            score_map = F.interpolate(
                score_map, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        features[self.concat_to] = torch.cat([target, score_map], dim=1)
        return features

    def losses(self, score_map: torch.Tensor, sem_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            score_map (Tensor): [B, K, h, w] from :meth:`forward`.
            sem_seg (Tensor): labels [B, H, W] (int64; ``ignore_value`` is left out).

        Returns:
            dict: {"loss_ptm": weighted cross-entropy of ``score_map / tau`` upsampled to H x W}.
        """
        logits = F.interpolate(
            score_map / self.temperature,
            size=sem_seg.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        if not (sem_seg != self.ignore_value).any():
            # Cross-entropy over no pixel is NaN; keep the graph with a zero loss.
            return {"loss_ptm": logits.sum() * 0.0}
        loss = F.cross_entropy(logits, sem_seg, ignore_index=self.ignore_value)
        return {"loss_ptm": self.loss_weight * loss}
