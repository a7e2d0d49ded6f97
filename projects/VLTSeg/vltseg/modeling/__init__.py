"""
Mask2Former modules of VLTSeg, written for this project (pure PyTorch, no compiled ops), one
concept per file. Parameter names match official Mask2Former so that its checkpoints load.

Importing this package registers ``MaskFormerHead`` in Detectron2's SEM_SEG_HEADS_REGISTRY,
``MSDeformAttnPixelDecoder`` in PIXEL_DECODER_REGISTRY and ``MultiScaleMaskedTransformerDecoder``
in TRANSFORMER_DECODER_REGISTRY.
"""
from .criterion import SetCriterion, build_criterion
from .mask_former_head import MaskFormerHead
from .matcher import HungarianMatcher
from .ms_deform_attn import MSDeformAttn, ms_deform_attn
from .ms_deform_attn_export import ms_deform_attn_grid_sample
from .ms_deform_attn_triton import ms_deform_attn_triton
from .pixel_decoder import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder, build_pixel_decoder
from .point_sampling import point_sample, uncertain_point_coords_with_randomness
from .position_encoding import PositionEmbeddingSine
from .query_linking import QueryLinker, build_query_linker
from .transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)

__all__ = [
    "MSDeformAttn",
    "ms_deform_attn",
    "ms_deform_attn_grid_sample",
    "ms_deform_attn_triton",
    "PositionEmbeddingSine",
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "MSDeformAttnPixelDecoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
    "MaskFormerHead",
    "HungarianMatcher",
    "SetCriterion",
    "build_criterion",
    "point_sample",
    "uncertain_point_coords_with_randomness",
    "QueryLinker",
    "build_query_linker",
]
