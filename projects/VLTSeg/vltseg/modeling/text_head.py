"""DenseCLIP's pixel-text matching head: VLTSeg's optional auxiliary loss L_PTM.

DenseCLIP (Rao et al., CVPR 2022, arXiv 2112.01518; official code raoyongming/DenseCLIP), ViT
variant, as VLTSeg uses it:

1. Visual side: CLIP's own image-side projection (the tower's final norm, then its projection)
   of the final block's tokens at stride 16 gives the pixel embeddings ``v [B, D, h, w]`` and
   CLIP's pooled image embedding ``g [B, D]`` (:meth:`CLIPViTBackbone.clip_embeddings
   <vlt_common.modeling.backbone.clip_vit.CLIPViTBackbone.clip_embeddings>`), so that pixels and
   text start aligned. Both are trained with the backbone.
2. Language side: learnable context vectors (8) before every bare class name go through the
   *frozen* CLIP text tower, giving raw text embeddings ``t [K, D]``.
3. Context-aware prompting: a pre-norm transformer decoder (3 layers, width 256, 4 heads) lets the
   text attend to ``[g, v]``; ``t' = t + gamma * decoder(t, [g, v])`` with a per-channel gamma
   initialized to 1e-4, added to the raw (not normalized) embeddings.
4. Score map ``s = cos(v, t') [B, K, h, w]``, concatenated to the stride-16 map before the pixel
   decoder (``CONCAT_TO: res4``, DenseCLIP's ``score_concat_index`` of its ViT config), and
   ``L_PTM = 0.4 * CE(upsample(s / 0.07), labels)`` averaged over all pixels, ignored ones
   counting zero (mmseg's ``CrossEntropyLoss`` with ``avg_non_ignore=False``).
5. The context vectors and gamma train with DenseCLIP's weight decay 1e-4.
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


class _Attention(nn.Module):
    """DenseCLIP's attention: q/k/v projections without bias, an output projection with bias,
    dropout on the output projection (none on the attention weights)."""

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query (Tensor): [B, N, C].
            memory (Tensor): keys and values [B, M, C].

        Returns:
            Tensor: [B, N, C].
        """
        def heads(x):  # [B, L, C] -> [B, heads, L, C / heads]
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(memory)), heads(self.v_proj(memory))
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C / heads)) v
        return self.proj_drop(self.proj(x.transpose(1, 2).flatten(2)))


class _ContextDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention over the text queries, cross-attention to the
    visual tokens, MLP (4x width, GELU)."""

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = _Attention(width, num_heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, num_heads, dropout)
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
        text = text + self.self_attn(q, q)
        text = text + self.cross_attn(self.norm2(text), memory)
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
            dropout (float): dropout after the attention output projections and in the MLP.
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
        # DenseCLIP's initialization of every linear layer (the attention projections included):
        # truncated normal (std 0.02) weights, zero biases; LayerNorm 1 / 0.
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
    Pixel-text matching on CLIP's projected final-block tokens (see the module docstring).

    Use: after ``features = backbone(images)``, ``score_map = head(*backbone.clip_embeddings())``;
    in training ``head.losses(score_map, sem_seg)``; with ``concat_to`` set,
    ``features = head.concat_score_map(features, score_map)`` before the pixel decoder, whose
    input shape is :meth:`head_input_shape`.

    Not registered in ``SEM_SEG_HEADS_REGISTRY``: it is an auxiliary head of
    :class:`vltseg.VLTSeg`, not a segmentation head with that registry's call contract.
    """

    @configurable
    def __init__(
        self,
        *,
        text_encoder: nn.Module,
        class_names: Sequence[str],
        context_length: int = 8,
        refine_layers: int = 3,
        refine_width: int = 256,
        refine_heads: int = 4,
        dropout: float = 0.1,
        gamma_init: float = 1e-4,
        temperature: float = 0.07,
        loss_weight: float = 0.4,
        ignore_value: int = 255,
        concat_to: str = "res4",
        avg_non_ignore: bool = False,
        weight_decay: float = 1e-4,
    ):
        """
        Args:
            text_encoder (nn.Module): frozen CLIP text tower with the interface of
                :class:`vlt_common.modeling.text_encoder.CLIPTextEncoder` (``width``,
                ``embed_dim``, ``encode_with_context(context [n, width], class_names) -> [K, D]``
                raw embeddings).
            class_names (sequence[str]): the K class names, in label order.
            context_length (int): number of learnable context vectors.
            refine_layers, refine_width, refine_heads, dropout: the context decoder.
            gamma_init (float): initial residual scale of the text refinement.
            temperature (float): tau of ``score / tau`` in the loss.
            loss_weight (float): lambda of L_PTM.
            ignore_value (int): label value left out of the loss.
            concat_to (str): backbone level that gets the score map concatenated ("" disables).
            avg_non_ignore (bool): average the loss over the labelled pixels; False (DenseCLIP)
                averages over all pixels, the ignored ones counting zero.
            weight_decay (float): weight decay of the context vectors and gamma.
        """
        super().__init__()
        if context_length <= 0:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.text_encoder = text_encoder
        self.class_names = list(class_names)
        self.concat_to = concat_to
        self.temperature = temperature
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.avg_non_ignore = avg_non_ignore
        self.weight_decay = weight_decay
        embed_dim = text_encoder.embed_dim
        # DenseCLIP draws the context vectors from a (truncated) standard normal.
        self.contexts = nn.Parameter(torch.empty(context_length, text_encoder.width))
        nn.init.trunc_normal_(self.contexts)
        self.context_decoder = ContextDecoder(
            embed_dim=embed_dim,
            width=refine_width,
            num_heads=refine_heads,
            num_layers=refine_layers,
            dropout=dropout,
        )
        self.gamma = nn.Parameter(torch.full((embed_dim,), float(gamma_init)))
        logger.info(
            "Pixel-text matching: %d classes, %d context vectors, L_PTM weight %g, score map "
            "concatenated to %r",
            len(self.class_names),
            context_length,
            loss_weight,
            concat_to,
        )

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module, class_names: Sequence[str]):
        from vlt_common.modeling.text_encoder import CLIPTextEncoder

        head_cfg = cfg.MODEL.VLTSEG.TEXT_HEAD
        if not getattr(backbone, "clip_head", False):
            raise ValueError(
                "MODEL.VLTSEG.TEXT_HEAD needs CLIP's image projection of the backbone (DenseCLIP's "
                "pixel embeddings): use build_clip_vit_backbone with MODEL.VLT_BACKBONE.CLIP_HEAD "
                f"True (got {type(backbone).__name__} without it)"
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
            "context_length": head_cfg.CONTEXT_LENGTH,
            "refine_layers": head_cfg.REFINE_LAYERS,
            "gamma_init": head_cfg.GAMMA_INIT,
            "temperature": head_cfg.TEMPERATURE,
            "loss_weight": head_cfg.LOSS_WEIGHT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "concat_to": head_cfg.CONCAT_TO,
            "avg_non_ignore": head_cfg.AVG_NON_IGNORE,
            "weight_decay": head_cfg.WEIGHT_DECAY,
        }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def weight_decay_overrides(self) -> Dict[str, float]:
        """Returns: {"contexts", "gamma"} -> ``weight_decay``, read by
        :func:`vlt_common.solver.get_param_groups`."""
        return {"contexts": self.weight_decay, "gamma": self.weight_decay}

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

    def text_embeddings(self, global_embed: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """
        Context-aware text embeddings: ``t + gamma * decoder(t, [g, v])`` with t the raw text
        embeddings (normalized only afterwards, in the score map), as DenseCLIP computes them.

        Args:
            global_embed (Tensor): CLIP's pooled image embedding g [B, D].
            pixels (Tensor): pixel embeddings v [B, D, h, w].

        Returns:
            Tensor: [B, K, D], not normalized.
        """
        text = self.text_encoder.encode_with_context(self.contexts, self.class_names)  # [K, D]
        text = text.unsqueeze(0).expand(pixels.shape[0], -1, -1)
        # DenseCLIP's visual context is [global token, pixel tokens].
        context = torch.cat([global_embed.unsqueeze(1), pixels.flatten(2).transpose(1, 2)], dim=1)
        return text + self.gamma * self.context_decoder(text, context)

    def forward(self, global_embed: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            global_embed (Tensor): CLIP's pooled image embedding [B, D].
            pixels (Tensor): CLIP-projected pixel embeddings [B, D, h, w].

        Returns:
            Tensor: cosine pixel-text score map [B, K, h, w] (values in [-1, 1], not divided by
            the temperature).
        """
        if pixels.shape[1] != self.text_encoder.embed_dim:
            raise ValueError(
                f"The backbone's CLIP embeddings have {pixels.shape[1]} channels but the text "
                f"tower (MODEL.VLTSEG.TEXT_HEAD.TEXT_ARCH) embeds to {self.text_encoder.embed_dim}"
                "; the two must come from the same CLIP model"
            )
        text = self.text_embeddings(global_embed, pixels)
        return torch.einsum(
            "bdhw,bkd->bkhw", F.normalize(pixels, dim=1), F.normalize(text, dim=-1)
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
            dict: {"loss_ptm": ``loss_weight`` times the cross-entropy of ``score_map / tau``
            upsampled (bilinear) to H x W, summed over the labelled pixels and divided by all
            B * H * W pixels (``avg_non_ignore`` False, DenseCLIP) or by the labelled ones}; 0
            (with a graph) when every pixel is ignored.
        """
        logits = F.interpolate(
            score_map / self.temperature,
            size=sem_seg.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        per_pixel = F.cross_entropy(
            logits, sem_seg, ignore_index=self.ignore_value, reduction="none"
        )  # [B, H, W], 0 where ignored
        if self.avg_non_ignore:
            count = (sem_seg != self.ignore_value).sum().clamp(min=1)
        else:
            count = per_pixel.numel()
        return {"loss_ptm": self.loss_weight * per_pixel.sum() / count}
