"""VLTSeg: Mask2Former on a (vision-language) backbone, with an optional DenseCLIP text head and
Rein query linking ("Strong but Simple", arXiv 2312.02021; "Stronger, Fewer, & Superior", arXiv
2312.04265).

Targets: the model builds Mask2Former's per-image targets itself from the batched ``"sem_seg"``
label maps (one binary mask per class present in the image, the ignore label excluded), as
Detectron2's ``SemanticSegmentor`` reads ``"sem_seg"``; so any semantic-segmentation mapper works.
"""
import logging
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    Backbone,
    build_backbone,
    build_sem_seg_head,
)
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from vlt_common.data.datasets.builtin_meta import CITYSCAPES_19_CLASSES
from vlt_common.inference import SlidingWindow, dense_inference

from .modeling import build_criterion
from .query_linking import QueryLinker, build_query_linker
from .text_head import DenseCLIPTextHead

__all__ = ["VLTSeg", "semantic_inference", "class_names_from_config"]

logger = logging.getLogger(__name__)


def class_names_from_config(cfg) -> List[str]:
    """
    The model's class names: ``MODEL.VLTSEG.CLASS_NAMES``, or the 19 Cityscapes classes when it
    is empty.

    Raises:
        ValueError: when their number differs from ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
    """
    names = list(cfg.MODEL.VLTSEG.CLASS_NAMES) or list(CITYSCAPES_19_CLASSES)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if len(names) != num_classes:
        source = "MODEL.VLTSEG.CLASS_NAMES" if cfg.MODEL.VLTSEG.CLASS_NAMES else (
            "the default 19 Cityscapes classes (MODEL.VLTSEG.CLASS_NAMES is empty)"
        )
        raise ValueError(
            f"{source} has {len(names)} names but MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes}"
        )
    return names


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Mask2Former's semantic inference: class probabilities (without "no object") times mask
    probabilities, summed over the queries.

    Args:
        mask_cls (Tensor): class logits [B, Q, K + 1].
        mask_pred (Tensor): mask logits [B, Q, H, W].

    Returns:
        Tensor: per-class scores [B, K, H, W].
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_pred.sigmoid())


@META_ARCH_REGISTRY.register()
class VLTSeg(nn.Module):
    """
    Mask2Former semantic segmentation (any Detectron2 backbone) with VLTSeg's options.

    Input: Detectron2 batched inputs, a list of dicts with
        - "image": uint8 Tensor [3, H, W] in the config's INPUT.FORMAT;
        - "sem_seg" (training): int64 Tensor [H, W] of train ids, ``ignore_value`` = unknown;
        - "height", "width" (inference, optional): output resolution; defaults to H, W.

    Output:
        training: dict of losses (the criterion's "loss_ce", "loss_mask", "loss_dice" and their
        "_{i}" deep-supervision terms, weighted; plus "loss_ptm" with the text head);
        inference: list of {"sem_seg": Tensor [K, height, width]} per-class scores.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        class_names: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = -1,
        ignore_value: int = 255,
        text_head: Optional[DenseCLIPTextHead] = None,
        query_linker: Optional[QueryLinker] = None,
        sliding_window: Optional[SlidingWindow] = None,
        tta_scales: Sequence[float] = (),
        tta_flip: bool = False,
    ):
        """
        Args:
            backbone (Backbone): any Detectron2 backbone; its outputs feed ``sem_seg_head``.
            sem_seg_head (nn.Module): Mask2Former head: ``head(features, query_embed=None,
                query_feat=None)`` -> {"pred_logits", "pred_masks", "aux_outputs"}.
            criterion (nn.Module): ``criterion(outputs, targets)`` -> dict of losses; terms in
                its ``weight_dict`` (if it has one) are multiplied by their weight, others dropped.
            class_names (sequence[str]): the K class names in label order.
            pixel_mean, pixel_std (sequence[float]): per-channel normalization (0..255 scale).
            size_divisibility (int): pad images to a multiple of this; -1 uses the backbone's.
            ignore_value (int): label value without supervision.
            text_head (DenseCLIPTextHead or None): pixel-text matching head (adds "loss_ptm").
            query_linker (QueryLinker or None): derive the queries from ``backbone.rein``.
            sliding_window (SlidingWindow or None): sliding-window inference; None = whole image.
            tta_scales (sequence[float]): test-time-augmentation scales (empty: no TTA).
            tta_flip (bool): add horizontally flipped views to the TTA.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.class_names = list(class_names)
        self.ignore_value = ignore_value
        self.text_head = text_head
        self.query_linker = query_linker
        if query_linker is not None and getattr(backbone, "rein", None) is None:
            raise ValueError("a query linker needs a backbone with a Rein module (backbone.rein)")
        self.sliding_window = sliding_window
        self.tta_scales = tuple(tta_scales)
        self.tta_flip = tta_flip
        if size_divisibility < 0:
            size_divisibility = backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if query_linker is not None:
            self._freeze_replaced_queries(query_linker.query_feat_proj is not None)

    def _freeze_replaced_queries(self, features_linked: bool):
        # The linked queries replace the head's learned ones, which then get no gradient; they are
        # frozen so that DDP (without find_unused_parameters) does not wait for their gradients.
        # They stay in the module so that official Mask2Former checkpoints still load.
        prefixes = ["predictor.query_embed."]
        if features_linked:
            prefixes.append("predictor.query_feat.")
        frozen = []
        for name, param in self.sem_seg_head.named_parameters():
            if any(name.startswith(p) for p in prefixes):
                param.requires_grad_(False)
                frozen.append(name)
        logger.info("Rein query linking: froze the replaced head parameters %s", frozen)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        class_names = class_names_from_config(cfg)
        input_shape = backbone.output_shape()
        text_head = None
        if cfg.MODEL.VLTSEG.TEXT_HEAD.ENABLED:
            text_head = DenseCLIPTextHead(cfg, input_shape, class_names)
            input_shape = text_head.head_input_shape(input_shape)
        sliding_window = None
        if cfg.TEST.SLIDING_WINDOW.ENABLED:
            sw = cfg.TEST.SLIDING_WINDOW
            sliding_window = SlidingWindow(
                crop_size=tuple(sw.CROP_SIZE), stride=tuple(sw.STRIDE), batch_size=sw.BATCH_SIZE
            )
        tta = cfg.TEST.AUG.ENABLED
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, input_shape),
            "criterion": build_criterion(cfg),
            "class_names": class_names,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "text_head": text_head,
            "query_linker": build_query_linker(cfg, backbone),
            "sliding_window": sliding_window,
            "tta_scales": tuple(cfg.TEST.AUG.SCALES) if tta else (),
            "tta_flip": bool(tta and cfg.TEST.AUG.FLIP),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs (list[dict]): see the class docstring.

        Returns:
            dict[str, Tensor] of losses in training, list[dict] with "sem_seg" in inference.
        """
        images = [self._normalize(x["image"]) for x in batched_inputs]
        if self.training:
            return self._losses(images, batched_inputs)
        return self._inference(images, batched_inputs)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def _features(self, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        features = self.backbone(x)
        score_map = None
        if self.text_head is not None and (self.training or self.text_head.concat_to):
            score_map = self.text_head(features)
            if self.text_head.concat_to:
                features = self.text_head.concat_score_map(features, score_map)
        return features, score_map

    def _decode(self, features: Dict[str, torch.Tensor]) -> dict:
        if self.query_linker is None:
            return self.sem_seg_head(features)
        query_embed, query_feat = self.query_linker(self.backbone.rein.layer_tokens())
        return self.sem_seg_head(features, query_embed=query_embed, query_feat=query_feat)

    def prepare_targets(self, sem_seg: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """
        Mask2Former targets from label maps.

        Args:
            sem_seg (Tensor): padded labels [B, H, W].

        Returns:
            list[dict]: per image {"labels": int64 [N], "masks": float [N, H, W]}, one binary mask
            per class present (the ignore value excluded).
        """
        targets = []
        for labels in sem_seg:
            classes = torch.unique(labels)
            classes = classes[classes != self.ignore_value]
            masks = (labels.unsqueeze(0) == classes.view(-1, 1, 1)).float()
            targets.append({"labels": classes, "masks": masks})
        return targets

    def _losses(self, images: List[torch.Tensor], batched_inputs: List[dict]):
        if any("sem_seg" not in x for x in batched_inputs):
            raise KeyError("VLTSeg needs a 'sem_seg' label map in every training input")
        images = ImageList.from_tensors(images, self.size_divisibility)
        # Mappers may hand out uint8 label maps; the criterion needs int64 class ids.
        sem_seg = [x["sem_seg"].to(self.device).long() for x in batched_inputs]
        sem_seg = ImageList.from_tensors(sem_seg, self.size_divisibility, self.ignore_value).tensor
        features, score_map = self._features(images.tensor)
        outputs = self._decode(features)
        losses = self.criterion(outputs, self.prepare_targets(sem_seg))
        weight_dict = getattr(self.criterion, "weight_dict", None)
        if weight_dict is not None:
            losses = {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}
        if score_map is not None:
            losses.update(self.text_head.losses(score_map, sem_seg))
        return losses

    def semantic_scores(self, images: torch.Tensor) -> torch.Tensor:
        """
        The score function of :mod:`vlt_common.inference`.

        Args:
            images (Tensor): normalized, padded images [B, 3, H, W].

        Returns:
            Tensor: per-class scores [B, K, H, W] (mask logits upsampled bilinearly to H x W
            before the sigmoid, as official Mask2Former does).
        """
        features, _ = self._features(images)
        outputs = self._decode(features)
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return semantic_inference(outputs["pred_logits"], mask_pred)

    def _inference(self, images: List[torch.Tensor], batched_inputs: List[dict]):
        infer = partial(
            dense_inference,
            self.semantic_scores,
            size_divisibility=self.size_divisibility,
            sliding_window=self.sliding_window,
            tta_scales=self.tta_scales,
            tta_flip=self.tta_flip,
        )
        results = []
        # Image by image: sizes may differ, and a sliding window or TTA is per image anyway.
        for image, inputs in zip(images, batched_inputs):
            scores = infer(image.unsqueeze(0))[0]
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            scores = sem_seg_postprocess(scores, scores.shape[-2:], height, width)
            results.append({"sem_seg": scores})
        return results
