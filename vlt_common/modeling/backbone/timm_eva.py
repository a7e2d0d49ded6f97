"""Adapter for timm's ``Eva``: EVA02 and the EVA02-CLIP image towers (open_clip's ``EVA02-*``
models wrap this class as ``visual.trunk``)."""
from timm.models import eva

from .timm_vit import TimmViTAdapter, require_dynamic_img_size
from .trunk_adapter import PATCH_DROP_MESSAGE, register_trunk_adapter

__all__ = ["TimmEvaAdapter"]


@register_trunk_adapter
class TimmEvaAdapter(TimmViTAdapter):
    """
    Drives ``timm.models.eva.Eva`` built with ``dynamic_img_size=True``: absolute position
    embeddings are resampled and the rotary embeddings (RoPE) are recomputed for each input's grid,
    scaled to the pre-training grid (``ref_feat_shape``). Checkpoints go through timm's
    ``eva.checkpoint_filter_fn``, which reads EVA-CLIP's own key names (``visual.blocks.*.attn.
    q_proj``, ``mlp.w1``, ...) as well as open_clip's ``visual.trunk.*``.
    """

    trunk_type = eva.Eva
    family = "timm EVA"

    def check_trunk(self, trunk):
        require_dynamic_img_size(trunk)
        if trunk.patch_drop is not None:
            raise ValueError(PATCH_DROP_MESSAGE)
        if trunk.rope_mixed:
            raise ValueError("Eva trunks with per-block ('mixed') RoPE are not supported.")

    def embed(self, trunk, x):
        x = trunk.patch_embed(x)  # [B, h, w, C] (dynamic size)
        grid = tuple(x.shape[1:3])
        rope = trunk.rope.get_embed(shape=grid) if trunk.rope is not None else None
        return trunk.norm_pre(self.add_pos_embed(trunk, x)), {"rope": rope}

    def run_block(self, block, x, rope=None):
        return block(x, rope=rope)

    def convert_checkpoint(self, state_dict, trunk):
        return eva.checkpoint_filter_fn(state_dict, trunk)
