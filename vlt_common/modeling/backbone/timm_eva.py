"""Adapter for timm's ``Eva``: EVA02 and the EVA02-CLIP image towers (open_clip's ``EVA02-*``
models wrap this class as ``visual.trunk``)."""
from timm.models import eva

from .timm_vit import _PATCH_DROP_MSG, TimmViTAdapter, _check_dynamic
from .trunk_adapter import register_trunk_adapter

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
        _check_dynamic(trunk)
        if trunk.patch_drop is not None:
            raise ValueError(_PATCH_DROP_MSG)
        if trunk.rope_mixed:
            raise ValueError("Eva trunks with per-block ('mixed') RoPE are not supported.")

    def embed(self, trunk, x):
        x = trunk.patch_embed(x)  # [B, h, w, C] (dynamic size)
        x, rope = trunk._pos_embed(x)  # [B, N, C], rotary embeddings of this grid (or None)
        return trunk.norm_pre(x), {"rope": rope}

    def run_block(self, block, x, rope=None):
        return block(x, rope=rope)

    def convert_checkpoint(self, state_dict, trunk):
        return eva.checkpoint_filter_fn(state_dict, trunk)
