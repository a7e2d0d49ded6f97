"""The Mask2Former head: pixel decoder + masked-attention transformer decoder."""
from typing import Dict, Optional

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from .legacy_keys import rename_legacy_keys
from .pixel_decoder import build_pixel_decoder
from .transformer_decoder import build_transformer_decoder

__all__ = ["MaskFormerHead"]

# The only decoder input Mask2Former uses: the pixel decoder's 3 multi-scale maps.
_MULTI_SCALE = "multi_scale_pixel_decoder"


def _legacy_head_key(local_key: str) -> str:
    """Pre-version-2 head key -> today's: the pixel decoder's weights sat directly in the head
    (official hook: every key but the predictor's moves under "pixel_decoder."). Keys already in
    today's layout are kept, so files without layout metadata (model-zoo pickles) load too."""
    if local_key.startswith(("predictor.", "pixel_decoder.")):
        return local_key
    return "pixel_decoder." + local_key


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """
    Mask2Former's segmentation head. Attribute names ``pixel_decoder`` and ``predictor`` match
    the official head, so official ``sem_seg_head.*`` checkpoint keys load unchanged (see
    tests/vltseg/test_official_checkpoint.py). State dicts of version < 2 (old model-zoo files,
    the pixel decoder's weights directly in the head) are converted while loading, as official
    Mask2Former does.
    """

    # Version of the state-dict layout (official Mask2Former's); older ones are converted.
    _version = 2

    @configurable
    def __init__(
        self, *, num_classes: int, pixel_decoder: nn.Module, transformer_predictor: nn.Module
    ):
        """
        Args:
            num_classes: number of semantic classes K.
            pixel_decoder: a module from PIXEL_DECODER_REGISTRY.
            transformer_predictor: a module from TRANSFORMER_DECODER_REGISTRY.
        """
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            rename_legacy_keys(state_dict, prefix, _legacy_head_key, type(self).__name__)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        if cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE != _MULTI_SCALE:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be {_MULTI_SCALE!r}, got "
                f"{cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE!r}"
            )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(
                cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_classification=True
            ),
        }

    def forward(
        self,
        features: Dict[str, Tensor],
        mask: Optional[Tensor] = None,
        query_embed: Optional[Tensor] = None,
        query_feat: Optional[Tensor] = None,
    ) -> Dict[str, object]:
        """
        Args:
            features (dict[str, Tensor]): backbone maps by name (extra maps are ignored).
            mask (Tensor, optional): padding mask of the batch. Accepted for the official
                signature and ignored, as in official Mask2Former: attention covers padded
                pixels too.
            query_embed (Tensor, optional): [Q, C] or [B, Q, C], C = MODEL.MASK_FORMER.HIDDEN_DIM;
                replaces the learned query positional embedding.
            query_feat (Tensor, optional): [Q, C] or [B, Q, C]; replaces the learned initial
                query features.

        Returns:
            dict: "pred_logits" [B, Q, K + 1], "pred_masks" [B, Q, H/4, W/4] and "aux_outputs"
            (a list of dicts with those keys, one per intermediate prediction).
        """
        mask_features, _, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(
            multi_scale_features, mask_features, query_embed=query_embed, query_feat=query_feat
        )
