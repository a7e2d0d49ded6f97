"""The semantic-segmentation dataset mapper of VLTSeg, registered as ``"semantic_dg"``.

Training follows the mmsegmentation recipe of the DG papers: resize (keep ratio), random scale,
random crop whose largest class covers at most ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``,
horizontal flip, photometric distortion, padding to the crop size with the ignore label.
Inference only resizes to ``INPUT.RESIZE_TEST`` and keeps the original ``height``/``width``, so
that the model returns predictions at the resolution of the ground truth.

The per-class binary mask targets of Mask2Former are built by the model from ``"sem_seg"`` (see
:class:`vltseg.VLTSeg`), so the mapper's output also works with other semantic models.
"""
import copy
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import transforms as T

from vlt_common.data.corruptions import read_dataset_image
from vlt_common.data.io import read_sem_seg
from vlt_common.data.mapper_registry import DATASET_MAPPER_REGISTRY

from .transforms import PhotometricDistortion, RandomRescale, short_edge_choice_resize

__all__ = ["SemanticDGDatasetMapper", "build_semantic_augmentations", "semantic_dg"]

logger = logging.getLogger(__name__)

# INPUT.RESIZE_TRAIN_TYPE values.
RESIZE_TRAIN_TYPES = ("scale", "short_edge_choice")


def build_semantic_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """
    The augmentation list of the ``"semantic_dg"`` mapper.

    Keys read: INPUT.RESIZE_TRAIN_TYPE, INPUT.RESIZE_TRAIN, INPUT.SCALE_RANGE_TRAIN (type
    "scale"), INPUT.MIN_SIZE_TRAIN, INPUT.MAX_SIZE_TRAIN (type "short_edge_choice"),
    INPUT.CROP.{ENABLED, TYPE, SIZE, SINGLE_CATEGORY_MAX_AREA}, INPUT.RANDOM_FLIP,
    INPUT.COLOR_AUG_SSD, INPUT.FORMAT, MODEL.SEM_SEG_HEAD.IGNORE_VALUE (training);
    INPUT.RESIZE_TEST (inference).

    Args:
        cfg (CfgNode):
        is_train (bool):

    Returns:
        list[Augmentation]
    """
    if not is_train:
        width, height = cfg.INPUT.RESIZE_TEST
        return [T.ResizeScale(1.0, 1.0, height, width)] if width > 0 and height > 0 else []

    augs = []
    min_scale, max_scale = cfg.INPUT.SCALE_RANGE_TRAIN
    width, height = cfg.INPUT.RESIZE_TRAIN
    resize_type = cfg.INPUT.RESIZE_TRAIN_TYPE
    if resize_type not in RESIZE_TRAIN_TYPES:
        raise ValueError(
            f"INPUT.RESIZE_TRAIN_TYPE must be one of {RESIZE_TRAIN_TYPES}, got {resize_type!r}"
        )
    if resize_type == "short_edge_choice":
        augs.append(short_edge_choice_resize(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN))
    elif width > 0 and height > 0:
        # Fit into (height, width) times a random factor, keeping the aspect ratio: mmseg's
        # Resize(img_scale=(width, height), ratio_range=(min, max), keep_ratio=True).
        augs.append(T.ResizeScale(min_scale, max_scale, height, width))
    elif (min_scale, max_scale) != (1.0, 1.0):
        augs.append(RandomRescale(min_scale, max_scale))
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(PhotometricDistortion(image_format=cfg.INPUT.FORMAT))
    return augs


class SemanticDGDatasetMapper:
    """
    Map a Detectron2 semantic-segmentation dataset dict (``file_name``, ``sem_seg_file_name``) to
    the model's input.

    Returns a copy of the dict with
        - "image": uint8 Tensor [3, H, W] in ``image_format`` channel order;
        - "sem_seg" (training only): int64 Tensor [H, W] of train ids, ``ignore_label`` where the
          label is unknown or the image was padded;
        - "height", "width": size of the image as read from disk (kept from the dict if present),
          the size at which the model must return predictions.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation],
        image_format: str,
        num_classes: int,
        ignore_label: int = 255,
        crop_size: Optional[Tuple[int, int]] = None,
        size_divisibility: int = -1,
        image_pad_value: Sequence[float] = (0.0, 0.0, 0.0),
    ):
        """
        Args:
            is_train (bool): training mode (labels are read and returned) or inference.
            augmentations (list[Augmentation]): applied in order to image and label.
            image_format (str): format for :func:`vlt_common.data.io.read_image`.
            num_classes (int): label values >= num_classes (other than ignore) become ignore.
            ignore_label (int): value of unknown pixels; also used for padding labels.
            crop_size (tuple[int, int] or None): (h, w); in training, images smaller than this
                (after augmentation) are padded up to it, so every batch has one size.
            size_divisibility (int): in training, also pad height and width to a multiple of
                this (-1 or 0: no padding).
            image_pad_value (sequence[float]): per-channel pixel value of the padded image area.
                The pixel mean is used so that the padding is zero after normalization, like the
                model's own padding.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.size_divisibility = size_divisibility
        self.image_pad_value = [float(v) for v in image_pad_value]
        mode = "training" if is_train else "inference"
        logger.info("[SemanticDGDatasetMapper] augmentations in %s: %s", mode, augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        crop = cfg.INPUT.CROP
        return {
            "is_train": is_train,
            "augmentations": build_semantic_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "crop_size": tuple(crop.SIZE) if crop.ENABLED and crop.TYPE == "absolute" else None,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "image_pad_value": [round(v) for v in cfg.MODEL.PIXEL_MEAN],
        }

    def __call__(self, dataset_dict: dict) -> dict:
        """
        Args:
            dataset_dict (dict): one dataset dict; it is not modified.

        Returns:
            dict: see the class docstring.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        # Corrupted test domains (``<dataset>_c_<corruption>_<severity>``) corrupt it here.
        image = read_dataset_image(dataset_dict, self.image_format)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])

        sem_seg = None
        if self.is_train:
            if "sem_seg_file_name" not in dataset_dict:
                raise KeyError(
                    f"training needs a label map: the dataset dict of {dataset_dict['file_name']} "
                    "has no 'sem_seg_file_name'"
                )
            sem_seg = read_sem_seg(
                dataset_dict["sem_seg_file_name"],
                self.num_classes,
                ignore_label=self.ignore_label,
                expected_hw=image.shape[:2],
                image_file=dataset_dict["file_name"],
            )

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if sem_seg is None:
            dataset_dict["image"] = image
            return dataset_dict

        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        image, sem_seg = self._pad(image, sem_seg)
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        return dataset_dict

    def _pad(self, image: torch.Tensor, sem_seg: torch.Tensor):
        h, w = image.shape[-2:]
        target_h, target_w = h, w
        if self.crop_size is not None:
            target_h, target_w = max(h, self.crop_size[0]), max(w, self.crop_size[1])
        if self.size_divisibility > 1:
            d = self.size_divisibility
            target_h, target_w = -(-target_h // d) * d, -(-target_w // d) * d
        if (target_h, target_w) == (h, w):
            return image, sem_seg
        padding = (0, target_w - w, 0, target_h - h)  # right and bottom
        pad_value = torch.tensor(self.image_pad_value, dtype=image.dtype).view(-1, 1, 1)
        padded = pad_value.expand(image.shape[0], target_h, target_w).clone()
        padded[:, :h, :w] = image
        sem_seg = F.pad(sem_seg, padding, value=self.ignore_label)
        return padded, sem_seg


@DATASET_MAPPER_REGISTRY.register()
def semantic_dg(cfg, is_train: bool) -> SemanticDGDatasetMapper:
    """
    The ``"semantic_dg"`` entry of ``DATASET_MAPPER_REGISTRY`` (``INPUT.DATASET_MAPPER_NAME``).

    Returns:
        SemanticDGDatasetMapper
    """
    return SemanticDGDatasetMapper(cfg, is_train)
