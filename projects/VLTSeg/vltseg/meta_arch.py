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

from vlt_common.inference import SlidingWindow, dense_inference
from vlt_common.label_spaces import CITYSCAPES_19_CLASSES

from .modeling import build_criterion
from .modeling.matcher import to_device_async
from .modeling.query_linking import QueryLinker, build_query_linker
from .modeling.text_head import DenseCLIPTextHead

__all__ = ["VLTSeg", "MaskFormer", "semantic_inference", "class_names_from_config"]

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


def check_mask2former_test_config(cfg) -> None:
    """
    Reject the official Mask2Former keys whose values VLTSeg cannot honour, instead of ignoring
    them: non-semantic outputs, and ResNet stems / res5 grids that Detectron2's
    ``build_resnet_backbone`` does not build.

    Raises:
        ValueError: naming the key and the supported value.
    """
    test = cfg.MODEL.MASK_FORMER.TEST
    if not test.SEMANTIC_ON or test.INSTANCE_ON or test.PANOPTIC_ON:
        raise ValueError(
            "VLTSeg does semantic segmentation only: MODEL.MASK_FORMER.TEST.SEMANTIC_ON must be "
            f"True and INSTANCE_ON / PANOPTIC_ON False, got {test.SEMANTIC_ON}, "
            f"{test.INSTANCE_ON}, {test.PANOPTIC_ON}"
        )
    if test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE and (
        cfg.TEST.SLIDING_WINDOW.ENABLED or cfg.TEST.AUG.ENABLED
    ):
        raise ValueError(
            "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE needs whole-image "
            "inference: set TEST.SLIDING_WINDOW.ENABLED and TEST.AUG.ENABLED to False"
        )
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone":
        resnets = cfg.MODEL.RESNETS
        if resnets.STEM_TYPE != "basic" or list(resnets.RES5_MULTI_GRID) != [1, 1, 1]:
            raise ValueError(
                "build_resnet_backbone builds the basic stem without a res5 multi-grid: "
                "MODEL.RESNETS.STEM_TYPE must be 'basic' and RES5_MULTI_GRID [1, 1, 1], got "
                f"{resnets.STEM_TYPE!r} and {list(resnets.RES5_MULTI_GRID)}"
            )


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
        sem_seg_postprocess_before_inference: bool = False,
    ):
        """
        Args:
            backbone (Backbone): any Detectron2 backbone; its outputs feed ``sem_seg_head``.
            sem_seg_head (nn.Module): Mask2Former head: ``head(features, query_embed=None,
                query_feat=None)`` -> {"pred_logits", "pred_masks", "aux_outputs"}.
            criterion (nn.Module): ``criterion(outputs, targets)`` -> dict of losses; terms in
                its ``weight_dict`` (if it has one) are multiplied by their weight, others dropped
                (as officially) and named in a warning once.
            class_names (sequence[str]): the K class names in label order.
            pixel_mean, pixel_std (sequence[float]): per-channel normalization (0..255 scale).
            size_divisibility (int): pad images to a multiple of this; -1 uses the backbone's.
            ignore_value (int): label value without supervision.
            text_head (DenseCLIPTextHead or None): pixel-text matching head (adds "loss_ptm");
                needs a backbone with ``clip_embeddings()`` (``clip_head`` True).
            query_linker (QueryLinker or None): derive the queries from
                ``backbone.layer_tokens()`` (Rein's tokens).
            sliding_window (SlidingWindow or None): sliding-window inference; None = whole image.
            tta_scales (sequence[float]): test-time-augmentation scales (empty: no TTA).
            tta_flip (bool): add horizontally flipped views to the TTA.
            sem_seg_postprocess_before_inference (bool): resize the mask logits to the output
                size before the semantic inference (official Mask2Former's option); whole-image
                inference only.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.class_names = list(class_names)
        self.ignore_value = ignore_value
        self.text_head = text_head
        self.query_linker = query_linker
        if query_linker is not None and not callable(getattr(backbone, "layer_tokens", None)):
            raise ValueError("a query linker needs a backbone with Rein tokens (layer_tokens())")
        self.sliding_window = sliding_window
        self.tta_scales = tuple(tta_scales)
        self.tta_flip = tta_flip
        if sem_seg_postprocess_before_inference and (sliding_window or tta_scales or tta_flip):
            raise ValueError(
                "sem_seg_postprocess_before_inference needs whole-image inference (no sliding "
                "window, no TTA)"
            )
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        # Loss terms the criterion returned without a weight, already reported (warned once).
        self._unweighted_reported = False
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
        check_mask2former_test_config(cfg)
        backbone = build_backbone(cfg)
        class_names = class_names_from_config(cfg)
        input_shape = backbone.output_shape()
        text_head = None
        if cfg.MODEL.VLTSEG.TEXT_HEAD.ENABLED:
            text_head = DenseCLIPTextHead(cfg, backbone, class_names)
            input_shape = text_head.head_input_shape(input_shape)
        elif getattr(backbone, "clip_head", False):
            # its CLIP projection would get no gradient (DDP and the solver would see it)
            raise ValueError(
                "MODEL.VLT_BACKBONE.CLIP_HEAD keeps the CLIP projection for the text head; set "
                "MODEL.VLTSEG.TEXT_HEAD.ENABLED or turn CLIP_HEAD off"
            )
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
            "sem_seg_postprocess_before_inference": (
                cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
            ),
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
        image = to_device_async(image, self.device)
        return (image.float() - self.pixel_mean) / self.pixel_std

    def _features(self, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        features = self.backbone(x)
        score_map = None
        if self.text_head is not None and (self.training or self.text_head.concat_to):
            score_map = self.text_head(*self.backbone.clip_embeddings())
            if self.text_head.concat_to:
                features = self.text_head.concat_score_map(features, score_map)
        return features, score_map

    def _decode(self, features: Dict[str, torch.Tensor]) -> dict:
        if self.query_linker is None:
            return self.sem_seg_head(features)
        query_embed, query_feat = self.query_linker(self.backbone.layer_tokens())
        return self.sem_seg_head(features, query_embed=query_embed, query_feat=query_feat)

    def prepare_targets(
        self, sem_seg: torch.Tensor, classes: Optional[List[torch.Tensor]] = None
    ) -> List[Dict[str, torch.Tensor]]:
        """
        Mask2Former targets from label maps.

        Args:
            sem_seg (Tensor): padded labels [B, H, W].
            classes (list[Tensor], optional): per image, the int64 class ids present (ignore
                value excluded), e.g. found on the CPU before the labels moved to the device;
                None finds them here (``torch.unique``, a host-device synchronization on GPU).

        Returns:
            list[dict]: per image {"labels": int64 [N], "masks": float [N, H, W]}, one binary mask
            per class present (the ignore value excluded).
        """
        if classes is None:
            classes = [self._classes_present(labels) for labels in sem_seg]
        targets = []
        for labels, present in zip(sem_seg, classes):
            present = present.to(labels.device, non_blocking=True)
            masks = (labels.unsqueeze(0) == present.view(-1, 1, 1)).float()
            targets.append({"labels": present, "masks": masks})
        return targets

    def _classes_present(self, labels: torch.Tensor) -> torch.Tensor:
        classes = torch.unique(labels)
        return classes[classes != self.ignore_value].long()

    def _losses(self, images: List[torch.Tensor], batched_inputs: List[dict]):
        if any("sem_seg" not in x for x in batched_inputs):
            raise KeyError("VLTSeg needs a 'sem_seg' label map in every training input")
        images = ImageList.from_tensors(images, self.size_divisibility)
        # The classes present, found where the mapper left the labels (the CPU), so that no
        # device value is read; then the labels move with a non-blocking copy from pinned memory.
        classes = [to_device_async(self._classes_present(x["sem_seg"]), self.device)
                   for x in batched_inputs]
        # Mappers may hand out uint8 label maps; the criterion needs int64 class ids.
        sem_seg = [to_device_async(x["sem_seg"], self.device).long() for x in batched_inputs]
        sem_seg = ImageList.from_tensors(sem_seg, self.size_divisibility, self.ignore_value).tensor
        features, score_map = self._features(images.tensor)
        outputs = self._decode(features)
        losses = self.criterion(outputs, self.prepare_targets(sem_seg, classes))
        weight_dict = getattr(self.criterion, "weight_dict", None)
        if weight_dict is not None:
            losses = self._weighted(losses, weight_dict)
        if score_map is not None:
            losses.update(self.text_head.losses(score_map, sem_seg))
        return losses

    def _weighted(self, losses: Dict[str, torch.Tensor], weight_dict: Dict[str, float]):
        """Multiply each loss by its weight; terms without one are dropped, as in official
        Mask2Former, but named in a warning (once per model) so that a typo in a weight key or a
        loss nobody weighted does not go unnoticed."""
        unweighted = sorted(k for k in losses if k not in weight_dict)
        if unweighted and not self._unweighted_reported:
            logger.warning(
                "The criterion returned loss terms without a weight in its weight_dict; they "
                "are dropped (not trained): %s",
                unweighted,
            )
            self._unweighted_reported = True
        return {k: v * weight_dict[k] for k, v in losses.items() if k in weight_dict}

    def _mask_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class logits [B, Q, K + 1] and mask logits upsampled bilinearly to the input size
        [B, Q, H, W] (as official Mask2Former does)."""
        features, _ = self._features(images)
        outputs = self._decode(features)
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return outputs["pred_logits"], mask_pred

    def semantic_scores(self, images: torch.Tensor) -> torch.Tensor:
        """
        The score function of :mod:`vlt_common.inference`.

        Args:
            images (Tensor): normalized, padded images [B, 3, H, W].

        Returns:
            Tensor: per-class scores [B, K, H, W] (mask logits upsampled bilinearly to H x W
            before the sigmoid, as official Mask2Former does).
        """
        return semantic_inference(*self._mask_logits(images))

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
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            if self.sem_seg_postprocess_before_inference:
                scores = self._postprocess_then_infer(image, height, width)
            else:
                scores = infer(image.unsqueeze(0))[0]
                scores = sem_seg_postprocess(scores, scores.shape[-2:], height, width)
            results.append({"sem_seg": scores})
        return results

    def _postprocess_then_infer(self, image: torch.Tensor, height: int, width: int):
        """Official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: the mask logits are cropped to the
        image and resized to (height, width), then turned into class scores [K, height, width]."""
        padded = ImageList.from_tensors([image], self.size_divisibility)
        mask_cls, mask_pred = self._mask_logits(padded.tensor)
        mask_pred = sem_seg_postprocess(mask_pred[0], padded.image_sizes[0], height, width)
        return semantic_inference(mask_cls, mask_pred[None])[0]


@META_ARCH_REGISTRY.register()
class MaskFormer(VLTSeg):
    """
    Official Mask2Former's meta-architecture name, so that its semantic-segmentation configs
    (``META_ARCHITECTURE: "MaskFormer"``) build the same model: VLTSeg with semantic outputs
    only (instance / panoptic settings are rejected by :func:`check_mask2former_test_config`).
    """
