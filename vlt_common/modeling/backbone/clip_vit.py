"""
:class:`CLIPViTBackbone`: a Detectron2 backbone over a CLIP / EVA-CLIP / DINOv2 / SAM / MAE /
supervised ViT trunk built by open_clip or timm.
"""
import logging
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.utils.checkpoint import checkpoint

from .neck import MultiScaleNeck
from .trunk_adapter import get_trunk_adapter, prepare_trunk
from .trunk_builder import build_trunk

__all__ = ["CLIPViTBackbone", "build_clip_vit_backbone", "default_out_indices"]

logger = logging.getLogger(__name__)

# Multi-scale outputs and their rescaling of the patch-stride maps: strides p/4, p/2, p, 2p
# (4, 8, 16, 32 for p = 16).
_LEVEL_SCALES = {"res2": 4.0, "res3": 2.0, "res4": 1.0, "res5": 0.5}
# The one output of "single" mode (ViTDet's SimpleFeaturePyramid input).
SINGLE_FEATURE = "last_feat"
OUTPUT_MODES = ("multiscale", "single")
FINETUNE_MODES = ("full", "frozen", "rein", "frozen_warmup")


def default_out_indices(depth: int) -> List[int]:
    """
    Blocks that feed res2..res5 when MODEL.VLT_BACKBONE.OUT_INDICES is empty.

    Args:
        depth (int): number of blocks.

    Returns:
        list[int]: 3/5/7/11 for 12 blocks and 9/14/19/23 for 24 (the choices of VLTSeg, ViT-Adapter
        and EVA-02 segmentation), else the last block of each quarter.
    """
    if depth == 12:
        return [3, 5, 7, 11]
    if depth == 24:
        return [9, 14, 19, 23]
    return [max(0, (k + 1) * depth // 4 - 1) for k in range(4)]


def _as_stride(value: float):
    return int(value) if float(value).is_integer() else value


class CLIPViTBackbone(Backbone):
    """
    A plain ViT trunk as a Detectron2 backbone, implementing VLT's backbone contract
    (:mod:`.contract`).

    "multiscale" mode returns res2..res5 at strides p/4, p/2, p, 2p (4/8/16/32 for patch 16),
    taken from four blocks and rescaled by :class:`MultiScaleNeck`; "single" mode returns the last
    block's tokens as one map "last_feat" at stride p (for ViTDet's SimpleFeaturePyramid). Every
    map has C = trunk width channels. Position embeddings (and EVA's rotary embeddings) follow the
    input size, square or not.

    Attributes:
        trunk (nn.Module): the open_clip / timm vision tower (pooling head removed).
        neck (MultiScaleNeck or None): the rescaling paths ("multiscale" mode).
        rein (nn.Module or None): applied to the tokens after every block when set.
        embed_dim (int), num_layers (int), patch_size (int), num_prefix_tokens (int).
    """

    @configurable
    def __init__(
        self,
        *,
        trunk: nn.Module,
        output: str = "multiscale",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        out_indices: Sequence[int] = (),
        freeze_blocks: int = 0,
        grad_checkpoint: bool = False,
        rein: Optional[nn.Module] = None,
        neck_norm: str = "LN",
        clip_head: bool = False,
        neck_mode: str = "learnable",
    ):
        """
        Args:
            trunk (nn.Module): an open_clip ``VisionTransformer`` or a timm ``VisionTransformer``
                / ``Eva`` / ``VisionTransformerSAM`` (timm ones built with
                ``dynamic_img_size=True`` where timm has the option), e.g. from
                :func:`build_trunk`. Its pooling head is removed here (``prepare_trunk``).
            output (str): "multiscale" or "single".
            out_features (list[str]): a subset of res2..res5 ("multiscale"), or ["last_feat"].
            out_indices (list[int]): 0-based blocks feeding res2..res5 (four, non-decreasing);
                empty: :func:`default_out_indices`.
            freeze_blocks (int): 0 trains the whole trunk; N > 0 freezes the embeddings and the
                first N blocks; -1 freezes the whole trunk.
            grad_checkpoint (bool): recompute each block in backward (training only).
            rein (nn.Module or None): a Rein module, called as ``rein(tokens, i,
                num_prefix_tokens)`` after block i.
            neck_norm (str): norm inside the 4x path of the learnable neck.
            neck_mode (str): "learnable" (ViTDet paths) or "interpolate" (Rein's bilinear
                resizing, no parameters); see :class:`MultiScaleNeck`.
            clip_head (bool): keep the tower's final norm and CLIP projection (trainable) and
                run every block, for :meth:`clip_embeddings` (DenseCLIP's pixel embeddings).
        """
        super().__init__()
        # removes the pooling head (keeping the CLIP projection with clip_head), checks the build
        adapter = prepare_trunk(trunk, clip_head=clip_head)
        self.clip_head = clip_head
        self._final_tokens: Optional[Tuple[torch.Tensor, Tuple[int, int]]] = None
        self._adapter = adapter
        self.trunk = trunk
        self.embed_dim = adapter.embed_dim(trunk)
        self.num_layers = len(adapter.blocks(trunk))
        self.patch_size = adapter.patch_size(trunk)
        self.num_prefix_tokens = adapter.num_prefix_tokens(trunk)
        self.rein = rein
        self.grad_checkpoint = grad_checkpoint

        if output == "multiscale":
            out_indices = list(out_indices) or default_out_indices(self.num_layers)
            self._check_out_indices(out_indices)
            names = list(_LEVEL_SCALES)
            bad = [f for f in out_features if f not in names]
            if not out_features or bad or len(set(out_features)) != len(out_features):
                raise ValueError(
                    f"MODEL.VLT_BACKBONE.OUT_FEATURES must be distinct names among {names} in "
                    f"'multiscale' mode, got {list(out_features)}."
                )
            self._out_features = [f for f in names if f in out_features]
            self._tap_blocks = {f: out_indices[names.index(f)] for f in self._out_features}
            scales = {f: _LEVEL_SCALES[f] for f in self._out_features}
            self.neck = MultiScaleNeck(
                channels=self.embed_dim, scales=scales, norm=neck_norm, mode=neck_mode
            )
            strides = {f: self.patch_size / s for f, s in scales.items()}
            self._size_divisibility = 2 * self.patch_size
        elif output == "single":
            if list(out_features) != [SINGLE_FEATURE]:
                raise ValueError(
                    f"MODEL.VLT_BACKBONE.OUTPUT 'single' returns one map; set "
                    f"MODEL.VLT_BACKBONE.OUT_FEATURES to ['{SINGLE_FEATURE}'], got "
                    f"{list(out_features)}."
                )
            self._out_features = [SINGLE_FEATURE]
            self._tap_blocks = {SINGLE_FEATURE: self.num_layers - 1}
            self.neck = None
            strides = {SINGLE_FEATURE: self.patch_size}
            self._size_divisibility = self.patch_size
        else:
            raise ValueError(
                f"MODEL.VLT_BACKBONE.OUTPUT must be one of {OUTPUT_MODES}, got '{output}'."
            )
        self._out_feature_strides = {f: _as_stride(s) for f, s in strides.items()}
        self._out_feature_channels = {f: self.embed_dim for f in self._out_features}
        # block index -> output names taken after it
        self._taps_after_block: Dict[int, List[str]] = {}
        for name, index in self._tap_blocks.items():
            self._taps_after_block.setdefault(index, []).append(name)
        # Blocks after the last tapped one would never get a gradient: skip and freeze them.
        self._num_run_blocks = max(self._tap_blocks.values()) + 1
        if clip_head:  # the CLIP projection reads the last block's tokens
            self._num_run_blocks = self.num_layers
        if self._num_run_blocks < self.num_layers:
            logger.info(
                "Blocks %d..%d feed no output; they are skipped and frozen.",
                self._num_run_blocks,
                self.num_layers - 1,
            )
        self._trainable_trunk_names = self._freeze(freeze_blocks)
        # A wholly frozen trunk runs in eval mode (dropout / drop path off), as official Rein's
        # set_train and FrozenBackboneEncoderDecoder do; see train().
        self._trunk_eval = freeze_blocks == -1
        self.train(self.training)

    def _check_out_indices(self, out_indices):
        ok = len(out_indices) == len(_LEVEL_SCALES) and all(
            0 <= i < self.num_layers for i in out_indices
        )
        if not ok or list(out_indices) != sorted(out_indices):
            raise ValueError(
                f"MODEL.VLT_BACKBONE.OUT_INDICES must be {len(_LEVEL_SCALES)} non-decreasing block "
                f"indices in [0, {self.num_layers}), got {list(out_indices)}."
            )

    def _freeze(self, freeze_blocks: int) -> List[str]:
        if not -1 <= freeze_blocks <= self.num_layers:
            raise ValueError(
                f"MODEL.VLT_BACKBONE.FREEZE_BLOCKS must be -1 (all), 0 (none) or a number of "
                f"blocks up to {self.num_layers}, got {freeze_blocks}."
            )
        trainable = []
        for name, param in self.trunk.named_parameters():
            layer = self._adapter.layer_id(name, self.num_layers)
            frozen = (
                freeze_blocks == -1
                or (freeze_blocks > 0 and layer <= freeze_blocks)
                or self._num_run_blocks < layer <= self.num_layers
            )
            param.requires_grad_(not frozen)
            if not frozen:
                trainable.append(name)
        return trainable

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        bcfg = cfg.MODEL.VLT_BACKBONE
        if input_shape is not None and input_shape.channels not in (None, 3):
            raise ValueError(
                f"The ViT trunks take RGB images; MODEL.PIXEL_MEAN has {input_shape.channels} "
                "channels."
            )
        if bcfg.FINETUNE not in FINETUNE_MODES:
            raise ValueError(
                f"MODEL.VLT_BACKBONE.FINETUNE must be one of {FINETUNE_MODES}, got "
                f"'{bcfg.FINETUNE}'."
            )
        trunk = build_trunk(
            bcfg.ARCH,
            embed_dim=bcfg.EMBED_DIM,
            depth=bcfg.DEPTH,
            num_heads=bcfg.NUM_HEADS,
            patch_size=bcfg.PATCH_SIZE,
            drop_path_rate=bcfg.DROP_PATH_RATE,
            pretrained=bcfg.PRETRAINED,
            clip_head=bcfg.CLIP_HEAD,
            patch_resample=bcfg.PATCH_RESAMPLE,
            pos_embed_grid=bcfg.POS_EMBED_GRID,
        )
        # "frozen_warmup" builds like "full"; a training hook toggles set_trunk_trainable().
        freeze_blocks = bcfg.FREEZE_BLOCKS if bcfg.FINETUNE in ("full", "frozen_warmup") else -1
        rein = None
        if bcfg.FINETUNE == "rein":
            # Imported here: Rein lives in its own file and only this mode needs it.
            from .rein import Rein

            adapter = get_trunk_adapter(trunk)
            rein = Rein(
                num_layers=len(adapter.blocks(trunk)),
                embed_dim=adapter.embed_dim(trunk),
                num_tokens=bcfg.REIN.NUM_TOKENS,
                rank=bcfg.REIN.RANK,
                scale_init=bcfg.REIN.SCALE_INIT,
                patch_size=adapter.patch_size(trunk),
            )
        return {
            "trunk": trunk,
            "output": bcfg.OUTPUT,
            "out_features": list(bcfg.OUT_FEATURES),
            "out_indices": list(bcfg.OUT_INDICES),
            "freeze_blocks": freeze_blocks,
            "grad_checkpoint": bcfg.GRAD_CHECKPOINT,
            "rein": rein,
            "clip_head": bcfg.CLIP_HEAD,
            "neck_mode": bcfg.NECK,
        }

    # ----------------------------------------------------------------------------------------------
    # Backbone interface
    # ----------------------------------------------------------------------------------------------
    @property
    def size_divisibility(self) -> int:
        """int: 2 * patch size in "multiscale" mode (the 0.5x max-pool), the patch size in
        "single" mode."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """dict: ``{"size_divisibility": int, "square_size": 0}``."""
        return {"size_divisibility": self._size_divisibility, "square_size": 0}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): normalized images [B, 3, H, W], H and W multiples of the patch size.

        Returns:
            dict[str, Tensor]: "res2".."res5" -> [B, C, H / s, W / s] for s = p/4, p/2, p, 2p
            (floor for res5), or {"last_feat": [B, C, H / p, W / p]}.
        """
        if x.dim() != 4:
            raise ValueError(f"CLIPViTBackbone expects [B, 3, H, W] images, got {tuple(x.shape)}.")
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of the patch size "
                f"{self.patch_size}; pad images to backbone.size_divisibility "
                f"({self.size_divisibility})."
            )
        grid = (height // self.patch_size, width // self.patch_size)
        # One loop over the blocks rather than timm's / open_clip's forward_intermediates: Rein
        # adapts the tokens after every block, blocks are checkpointed one by one, and blocks
        # after the last tapped one are skipped.
        tokens, block_kwargs = self._adapter.embed(self.trunk, x)
        blocks = self._adapter.blocks(self.trunk)
        maps = {}
        for i in range(self._num_run_blocks):
            if self.grad_checkpoint and self.training:
                tokens = checkpoint(
                    self._adapter.run_block, blocks[i], tokens, use_reentrant=False, **block_kwargs
                )
            else:
                tokens = self._adapter.run_block(blocks[i], tokens, **block_kwargs)
            if self.rein is not None:
                tokens = self.rein(tokens, i, self.num_prefix_tokens)
            for name in self._taps_after_block.get(i, ()):
                maps[name] = self._to_map(tokens, grid)
        if self.clip_head:
            self._final_tokens = (tokens, grid)
        if self.neck is None:
            return maps
        return self.neck(maps)

    def train(self, mode: bool = True) -> "CLIPViTBackbone":
        """
        Set the training mode like ``nn.Module.train``, except that a wholly frozen trunk
        (FREEZE_BLOCKS -1, i.e. the "frozen" and "rein" modes) stays in eval mode, so its dropout
        and drop path are off as in official Rein; the neck and Rein follow ``mode``.

        Args:
            mode (bool):

        Returns:
            CLIPViTBackbone: self.
        """
        super().train(mode)
        if self._trunk_eval:
            self.trunk.eval()
        return self

    def _to_map(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        # [B, P + h * w, C] -> [B, C, h, w]
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])

    # ----------------------------------------------------------------------------------------------
    # CLIP embeddings (DenseCLIP text head)
    # ----------------------------------------------------------------------------------------------
    def clip_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        DenseCLIP's visual embeddings of the images of the last :meth:`forward`: the tower's own
        final norm and CLIP projection applied to the final block's tokens (after Rein, if any).
        Needs ``clip_head=True`` (MODEL.VLT_BACKBONE.CLIP_HEAD). Each forward's tokens are read
        once: the call releases them.

        Returns:
            tuple[Tensor, Tensor]: CLIP's pooled image embedding [B, D] and the pixel embeddings
            [B, D, H / p, W / p] (patch stride p), neither normalized.
        """
        if not self.clip_head:
            raise RuntimeError(
                "clip_embeddings() needs the CLIP projection: set MODEL.VLT_BACKBONE.CLIP_HEAD"
            )
        if self._final_tokens is None:
            raise RuntimeError("clip_embeddings() reads the tokens of a forward; call it after one")
        (tokens, grid), self._final_tokens = self._final_tokens, None
        pooled, patches = self._adapter.clip_embed(self.trunk, tokens)
        pixels = patches.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])
        return pooled, pixels

    # ----------------------------------------------------------------------------------------------
    # Training helpers (solver and hooks)
    # ----------------------------------------------------------------------------------------------
    def layer_id(self, name: str) -> int:
        """
        Layer id for layer-wise lr decay (Detectron2's ``get_vit_lr_decay_rate`` semantics).

        Args:
            name (str): parameter name relative to this module, e.g.
                "trunk.blocks.3.attn.qkv.weight" or "neck.levels.res2.0.weight".

        Returns:
            int: 0 for the embeddings, i + 1 for block i, num_layers + 1 for the rest (neck,
            Rein).
        """
        prefix = "trunk."
        if name.startswith(prefix):
            return self._adapter.layer_id(name[len(prefix) :], self.num_layers)
        return self.num_layers + 1

    def set_trunk_trainable(self, flag: bool) -> None:
        """
        Switch ``requires_grad`` of the trunk parameters that FREEZE_BLOCKS leaves trainable
        (the others stay frozen); used by the frozen-backbone warm-up.

        Args:
            flag (bool):
        """
        params = dict(self.trunk.named_parameters())
        for name in self._trainable_trunk_names:
            params[name].requires_grad_(flag)

    def layer_tokens(self) -> Optional[torch.Tensor]:
        """
        The adapter tokens that VLTSeg links to its queries (Rein's ``T_i`` of every block).

        Returns:
            Tensor or None: [num_layers, m, C] with gradient, or None when the backbone has no
            Rein module (FINETUNE other than "rein").
        """
        return None if self.rein is None else self.rein.layer_tokens()

    def adapter_parameter_names(self) -> Set[str]:
        """
        Parameters of adapters that train at the head's learning rate, whatever
        SOLVER.BACKBONE_MULTIPLIER or SOLVER.LAYER_DECAY say (official Rein trains them at the
        base lr); read by :func:`vlt_common.solver.get_param_groups`.

        Returns:
            set[str]: names relative to this module (e.g. "rein.tokens_a"); empty without Rein.
        """
        if self.rein is None:
            return set()
        return {f"rein.{name}" for name, _ in self.rein.named_parameters()}


@BACKBONE_REGISTRY.register()
def build_clip_vit_backbone(cfg, input_shape):
    """
    Build :class:`CLIPViTBackbone` from ``cfg.MODEL.VLT_BACKBONE`` (MODEL.BACKBONE.NAME
    "build_clip_vit_backbone").

    Returns:
        CLIPViTBackbone
    """
    return CLIPViTBackbone(cfg, input_shape)
