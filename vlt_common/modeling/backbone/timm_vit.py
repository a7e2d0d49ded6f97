"""Adapter for timm's ``VisionTransformer``: DINOv2, MAE, ImageNet-supervised ViTs and other
timm ViTs with absolute position embeddings."""
from timm.models import vision_transformer
from torch import nn

from .trunk_adapter import TrunkAdapter, register_trunk_adapter

__all__ = ["TimmViTAdapter"]


@register_trunk_adapter
class TimmViTAdapter(TrunkAdapter):
    """
    Drives ``timm.models.vision_transformer.VisionTransformer`` built with
    ``dynamic_img_size=True`` (timm then resamples the position embeddings to each input's grid).
    Checkpoints go through timm's own ``checkpoint_filter_fn``, which converts DINOv2 / OpenAI CLIP
    / open_clip-timm key names and resamples patch kernels and position embeddings.
    """

    trunk_type = vision_transformer.VisionTransformer
    family = "timm ViT"
    embedding_names = ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")
    head_names = ("norm", "fc_norm", "attn_pool", "head")
    # A CLIP tower in timm (EVA02-CLIP via open_clip) projects with ``head`` (num_classes = D)
    clip_head_names = ("norm", "head")

    def check_trunk(self, trunk):
        _check_dynamic(trunk)
        if not isinstance(trunk.patch_drop, nn.Identity):
            raise ValueError(_PATCH_DROP_MSG)

    def timm_create_kwargs(self, native_trunk, depth):
        """
        Args:
            native_trunk (nn.Module): the architecture at its defaults (on the meta device).
            depth (int): the number of blocks the trunk is built with.

        Returns:
            dict: extra keyword arguments for ``timm.create_model``.
        """
        return {"dynamic_img_size": True}

    def embed(self, trunk, x):
        x = trunk.patch_embed(x)  # [B, h, w, C] (dynamic size)
        x = trunk._pos_embed(x)  # prefix tokens + resampled position embeddings, [B, N, C]
        return trunk.norm_pre(x), {}

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


_PATCH_DROP_MSG = (
    "The timm trunk was built with patch dropout, which drops tokens of the dense feature maps; "
    "build it with patch_drop_rate=0."
)


def _check_dynamic(trunk):
    if not trunk.dynamic_img_size:
        raise ValueError(
            f"The timm {type(trunk).__name__} must be built with dynamic_img_size=True so that "
            "its position embeddings follow the input size (build_trunk does this)."
        )
