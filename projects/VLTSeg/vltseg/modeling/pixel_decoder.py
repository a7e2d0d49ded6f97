"""
Mask2Former's multi-scale deformable-attention pixel decoder, and the registry of pixel decoders.

Submodule names follow the official implementation (``input_proj``, ``transformer``,
``mask_features``, ``adapter_1``, ``layer_1``) so that official checkpoints load unchanged.
"""
import math
from typing import Callable, Dict, List, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

from .deformable_encoder import DeformableTransformerEncoder
from .position_encoding import PositionEmbeddingSine

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder", "MSDeformAttnPixelDecoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for Mask2Former pixel decoders, which turn backbone features into per-pixel embeddings.

The registered object is called with ``obj(cfg, input_shape)``, ``input_shape`` a dict of backbone
feature name -> ShapeSpec. It must return an ``nn.Module`` whose
``forward(features: dict[str, Tensor])`` returns a tuple ``(mask_features, encoder_features,
multi_scale_features)``: mask features [B, MASK_DIM, H/4, W/4], the coarsest encoder output, and
the list of 3 maps (coarse to fine) that the transformer decoder attends to.
"""

# The transformer decoder always attends over 3 scales (Mask2Former's design).
NUM_DECODER_LEVELS = 3


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """
    Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

    Args:
        cfg (CfgNode): a VLTSeg config.
        input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward", None)):
        raise TypeError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} did not build a module")
    return model


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """
    Mask2Former's pixel decoder: a deformable transformer encoder over the coarser maps (e.g.
    strides 8/16/32), then an FPN that adds the finer maps (stride 4) top-down.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: Union[str, Callable],
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: shapes (channels, stride) of the backbone maps the decoder reads.
            transformer_dropout: dropout in the deformable encoder.
            transformer_nheads: deformable attention heads.
            transformer_dim_feedforward: hidden width of the encoder FFNs.
            transformer_enc_layers: number of encoder layers.
            transformer_n_points: sampling points per head and level.
            conv_dim: width of the decoder (and of the encoder).
            mask_dim: channels of the output mask features.
            norm: normalization of the FPN convolutions ("GN", "" for none, ...). The encoder's
                input projections always use GroupNorm(32), as in Deformable DETR.
            transformer_in_features: names of the maps the encoder attends over (a subset of
                input_shape); the finer remaining maps down to ``common_stride`` join via FPN.
            common_stride: stride of the output mask features.
        """
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"transformer_in_features {missing} are not among the inputs {sorted(input_shape)}"
            )
        # Fine to coarse (e.g. res2 .. res5).
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        encoder_inputs = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in encoder_inputs]
        num_levels = len(encoder_inputs)

        # One projection per encoder level, coarse to fine (index 0 is the coarsest map).
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)
            )
            for _, v in reversed(encoder_inputs)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        self.transformer = DeformableTransformerEncoder(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=num_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2, normalize=True)

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        # FPN levels between the finest encoder level and the output stride (1 for 8 -> 4).
        finest_stride = encoder_inputs[0][1].stride
        self.num_fpn_levels = int(math.log2(finest_stride) - math.log2(common_stride))
        use_bias = norm == ""
        self._fpn_names = []
        for idx, (_, shape) in enumerate(ordered[: self.num_fpn_levels]):
            lateral = Conv2d(
                shape.channels,
                conv_dim,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            # Official names: adapter_1 / layer_1 belong to the finest map.
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            self._fpn_names.append((f"adapter_{idx + 1}", f"layer_{idx + 1}"))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES lists {missing}, but the backbone only outputs "
                f"{sorted(input_shape)}"
            )
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in in_features},
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """
        Args:
            features (dict[str, Tensor]): backbone maps [B, C_f, H_f, W_f] by name.

        Returns:
            tuple:
            * mask_features (Tensor): [B, mask_dim, H / common_stride, W / common_stride].
            * encoder_features (Tensor): [B, conv_dim, H_c, W_c], the coarsest encoder output.
            * multi_scale_features (list[Tensor]): 3 maps [B, conv_dim, H_l, W_l], coarse to
              fine, for the transformer decoder.
        """
        # Deformable attention runs in float32 (as in the official decoder): sampling
        # locations in half precision are too coarse on large maps.
        with torch.autocast(device_type=features[self.in_features[0]].device.type, enabled=False):
            return self._forward(features)

    def _forward(self, features):
        srcs, pos = [], []
        for proj, name in zip(self.input_proj, reversed(self.transformer_in_features)):
            x = features[name].float()
            srcs.append(proj(x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, _ = self.transformer(srcs, pos)

        B = memory.shape[0]
        sizes = [h * w for h, w in spatial_shapes]  # Python ints: nothing read from the device
        out = [
            level.transpose(1, 2).reshape(B, -1, h, w)
            for level, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes)
        ]
        # Top-down over the finer maps that the encoder did not see.
        for (adapter, layer), name in zip(
            reversed(self._fpn_names), reversed(self.in_features[: self.num_fpn_levels])
        ):
            lateral = getattr(self, adapter)(features[name].float())
            top_down = F.interpolate(
                out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            out.append(getattr(self, layer)(lateral + top_down))
        return self.mask_features(out[-1]), out[0], out[:NUM_DECODER_LEVELS]
