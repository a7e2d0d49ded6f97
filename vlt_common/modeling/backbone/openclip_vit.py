"""Adapter for open_clip's own ``VisionTransformer`` (OpenAI CLIP ViT-B/16, ViT-L/14 and the
LAION / DataComp models with the same architecture)."""
import torch
from open_clip.transformer import VisionTransformer
from timm.layers import resample_abs_pos_embed
from torch import nn

from .trunk_adapter import (
    PATCH_DROP_MESSAGE,
    TrunkAdapter,
    register_trunk_adapter,
    square_size,
)

__all__ = ["OpenCLIPViTAdapter"]

# Prefix of the image tower in open_clip and OpenAI CLIP state dicts of the full model.
_VISUAL_PREFIX = "visual."


@register_trunk_adapter
class OpenCLIPViTAdapter(TrunkAdapter):
    """
    Drives ``open_clip.transformer.VisionTransformer``. One class token; position embeddings
    ``positional_embedding`` [1 + h * w, C] are resampled (bicubic, timm's
    ``resample_abs_pos_embed``) to each input's grid. OpenAI TorchScript archives and open_clip
    checkpoints share the key names (under ``visual.`` in full CLIP models).
    """

    trunk_type = VisionTransformer
    family = "open_clip ViT"
    embedding_names = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
    blocks_name = "transformer.resblocks"
    head_names = ("ln_post", "proj", "attn_pool", "attn_pool_contrastive")
    clip_head_names = ("ln_post", "proj")

    def check_trunk(self, trunk):
        if not trunk.transformer.batch_first:
            raise ValueError("The open_clip VisionTransformer must run batch-first.")
        if not isinstance(trunk.patch_dropout, nn.Identity):
            raise ValueError(PATCH_DROP_MESSAGE)

    def embed_dim(self, trunk):
        return int(trunk.transformer.width)

    def patch_size(self, trunk):
        return square_size(trunk.patch_size, "patch size")

    def grid_size(self, trunk):
        return tuple(int(s) for s in trunk.grid_size)

    def num_prefix_tokens(self, trunk):
        return 1

    def embed(self, trunk, x):
        x = trunk.conv1(x)  # [B, C, h, w]
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, h * w, C]
        cls_token = trunk.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1)
        pos_embed = resample_abs_pos_embed(
            trunk.positional_embedding.unsqueeze(0),
            new_size=grid,
            old_size=self.grid_size(trunk),
            num_prefix_tokens=1,
        )
        x = x + pos_embed.to(x.dtype)
        return trunk.ln_pre(x), {}

    def clip_embed(self, trunk, tokens):
        # open_clip's pooling for CLIP ViTs ("tok", norm before pooling): the pooled embedding
        # is the class token's row of ln_post(tokens) @ proj.
        attn_pool = getattr(trunk, "attn_pool", None)
        has_attn_pool = isinstance(attn_pool, nn.Module) and not isinstance(attn_pool, nn.Identity)
        if trunk.pool_type != "tok" or trunk.final_ln_after_pool or has_attn_pool:
            raise ValueError(
                "The CLIP projection of open_clip towers is supported for class-token pooling "
                f"only (pool_type 'tok'), got pool_type={trunk.pool_type!r}"
            )
        x = trunk.ln_post(tokens) @ trunk.proj  # [B, 1 + h * w, D]
        return x[:, 0], x[:, 1:]

    def convert_checkpoint(self, state_dict, trunk):
        if any(k.startswith(_VISUAL_PREFIX) for k in state_dict):
            # A full CLIP model (OpenAI archive or open_clip checkpoint): keep the image tower.
            state_dict = {
                k[len(_VISUAL_PREFIX) :]: v
                for k, v in state_dict.items()
                if k.startswith(_VISUAL_PREFIX)
            }
        return dict(state_dict)

