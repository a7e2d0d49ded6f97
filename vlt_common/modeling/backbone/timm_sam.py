"""Adapter for timm's ``VisionTransformerSAM``: the image encoder of Segment Anything."""
from functools import partial

from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import vision_transformer_sam
from torch import nn

from .timm_vit import TimmViTAdapter
from .trunk_adapter import PATCH_DROP_MESSAGE, register_trunk_adapter

# SAM's image encoder normalizes with LayerNorm(eps=1e-6) (segment_anything's build_sam); timm's
# VisionTransformerSAM defaults to nn.LayerNorm's 1e-5.
SAM_NORM_EPS = 1e-6

__all__ = ["TimmSAMAdapter"]


@register_trunk_adapter
class TimmSAMAdapter(TimmViTAdapter):
    """
    Drives ``timm.models.vision_transformer_sam.VisionTransformerSAM``. Its blocks take
    ``[B, h, w, C]`` maps (windowed attention with a few global blocks, relative position biases
    that timm interpolates to the input size), so :meth:`run_block` reshapes around each block.
    No prefix tokens. The SAM conv neck (to 256 channels) is removed: the backbone's own neck
    reads the block outputs. Original SAM checkpoints (``image_encoder.*``) are converted by timm.
    """

    trunk_type = vision_transformer_sam.VisionTransformerSAM
    family = "timm SAM ViT"
    embedding_names = ("pos_embed", "patch_embed", "norm_pre")
    head_names = ("neck", "head")

    def check_trunk(self, trunk):
        if not isinstance(trunk.patch_drop, nn.Identity):
            raise ValueError(PATCH_DROP_MESSAGE)

    def timm_create_kwargs(self, native_trunk, depth):
        kwargs = {"norm_layer": partial(nn.LayerNorm, eps=SAM_NORM_EPS)}
        if depth == len(native_trunk.blocks):
            return kwargs
        # Keep SAM's pattern of four global-attention blocks at the end of each quarter
        # (2/5/8/11 for 12 blocks, 5/11/17/23 for 24) when the depth is shrunk.
        kwargs["global_attn_indexes"] = sorted({max(0, (k + 1) * depth // 4 - 1) for k in range(4)})
        return kwargs

    def num_prefix_tokens(self, trunk):
        return 0

    def embed(self, trunk, x):
        x = trunk.patch_embed(x)  # [B, h, w, C]
        grid = tuple(x.shape[1:3])
        if trunk.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(trunk.pos_embed, list(grid))
        x = trunk.norm_pre(trunk.pos_drop(x))
        return x.flatten(1, 2), {"grid": grid}

    def run_block(self, block, x, grid=None):
        batch, _, channels = x.shape
        return block(x.view(batch, grid[0], grid[1], channels)).reshape(batch, -1, channels)

    def convert_checkpoint(self, state_dict, trunk):
        # timm's SAM filter only renames (original "image_encoder.*" keys); the kernel and the
        # position grid were converted before (conversion.convert_embeddings).
        return vision_transformer_sam.checkpoint_filter_fn(state_dict, trunk)
