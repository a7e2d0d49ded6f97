"""Adapter for timm's ``VisionTransformer``: DINOv2, MAE, ImageNet-supervised ViTs and other
timm ViTs with absolute position embeddings."""
from typing import Tuple

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import vision_transformer
from torch import nn

from .conversion import interpolate_pos_embed_dinov2
from .trunk_adapter import PATCH_DROP_MESSAGE, TrunkAdapter, register_trunk_adapter

__all__ = ["TimmViTAdapter", "require_dynamic_img_size", "is_dinov2"]


def require_dynamic_img_size(trunk: nn.Module) -> None:
    """
    Raise a ValueError unless the timm ``trunk`` was built with ``dynamic_img_size=True``.

    Args:
        trunk (nn.Module): a timm ``VisionTransformer`` or ``Eva``.
    """
    if not trunk.dynamic_img_size:
        raise ValueError(
            f"The timm {type(trunk).__name__} must be built with dynamic_img_size=True so that "
            "its position embeddings follow the input size (build_trunk does this)."
        )


def is_dinov2(trunk: nn.Module) -> bool:
    """
    Returns:
        bool: whether timm built ``trunk`` as a DINOv2 architecture (its ``pretrained_cfg``
        names a ``*dinov2*`` model).
    """
    cfg = getattr(trunk, "pretrained_cfg", None) or {}
    return "dinov2" in str(cfg.get("architecture", ""))


@register_trunk_adapter
class TimmViTAdapter(TrunkAdapter):
    """
    Drives ``timm.models.vision_transformer.VisionTransformer`` built with
    ``dynamic_img_size=True``. Position embeddings are interpolated to each input's grid as the
    encoder's own release does it: DINOv2 trunks with DINOv2's ``interpolate_pos_encoding``
    (scale factor ``(n + 0.1) / N``, bicubic, no antialias), the others with timm's
    ``resample_abs_pos_embed`` (bicubic, antialias). Checkpoints go through timm's own
    ``checkpoint_filter_fn``, which converts DINOv2 / OpenAI CLIP / open_clip-timm key names.
    """

    trunk_type = vision_transformer.VisionTransformer
    family = "timm ViT"
    embedding_names = ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")
    head_names = ("norm", "fc_norm", "attn_pool", "head")
    # A CLIP tower in timm (EVA02-CLIP via open_clip) projects with ``head`` (num_classes = D)
    clip_head_names = ("norm", "head")

    def check_trunk(self, trunk):
        require_dynamic_img_size(trunk)
        if not isinstance(trunk.patch_drop, nn.Identity):
            raise ValueError(PATCH_DROP_MESSAGE)

    def timm_create_kwargs(self, native_trunk, depth):
        return {"dynamic_img_size": True}

    def embed(self, trunk, x):
        x = trunk.patch_embed(x)  # [B, h, w, C] (dynamic size)
        return trunk.norm_pre(self.add_pos_embed(trunk, x)), {}

    def add_pos_embed(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """
        Prepend the class / register tokens and add the position embeddings of this grid (what
        timm's private ``_pos_embed`` does, with the encoder's own interpolation).

        Args:
            trunk (nn.Module): a timm ``VisionTransformer`` or ``Eva``.
            x (Tensor): patch tokens [B, h, w, C].

        Returns:
            Tensor: [B, P + h * w, C].
        """
        batch, height, width, channels = x.shape
        x = x.reshape(batch, -1, channels)
        prefix = [
            t.expand(batch, -1, -1) for t in (trunk.cls_token, trunk.reg_token) if t is not None
        ]
        if trunk.pos_embed is None:
            return trunk.pos_drop(torch.cat(prefix + [x], dim=1))
        pos_prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        pos_embed = self.interpolate_pos_embed(trunk, (height, width), pos_prefix)
        if trunk.no_embed_class:
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        return trunk.pos_drop(x)

    def interpolate_pos_embed(
        self, trunk: nn.Module, grid: Tuple[int, int], num_prefix: int
    ) -> torch.Tensor:
        """
        Returns:
            Tensor: the trunk's ``pos_embed`` [1, num_prefix + N, C] for an input ``grid``.
        """
        old_grid = tuple(int(s) for s in trunk.patch_embed.grid_size)
        if is_dinov2(trunk):
            return interpolate_pos_embed_dinov2(trunk.pos_embed, old_grid, grid, num_prefix)
        return resample_abs_pos_embed(
            trunk.pos_embed, new_size=grid, old_size=old_grid, num_prefix_tokens=num_prefix
        )

    def clip_embed(self, trunk, tokens):
        # timm's forward_head with class-token pooling: head(norm(tokens)[:, 0]).
        fc_norm = getattr(trunk, "fc_norm", nn.Identity())
        if trunk.global_pool != "token" or not isinstance(fc_norm, nn.Identity):
            raise ValueError(
                "The CLIP projection of timm towers is supported for class-token pooling only, "
                f"got global_pool={trunk.global_pool!r}"
            )
        if isinstance(trunk.head, nn.Identity):
            raise ValueError(
                f"The {self.family} trunk was built without its projection head (num_classes=0)."
            )
        x = trunk.head(trunk.norm(tokens))  # [B, P + h * w, D]
        return x[:, 0], x[:, self.num_prefix_tokens(trunk) :]

    def convert_checkpoint(self, state_dict, trunk):
        return vision_transformer.checkpoint_filter_fn(state_dict, trunk)
