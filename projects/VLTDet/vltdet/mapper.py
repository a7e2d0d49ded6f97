"""ViTDet's large-scale-jitter (LSJ) detection mapper, registered as ``"detection_lsj"``.

Training: horizontal flip, resize to fit a square of side ``IMAGE_SIZE * U(MIN_SCALE, MAX_SCALE)``,
random ``IMAGE_SIZE`` x ``IMAGE_SIZE`` crop (ViTDet's COCO LSJ loader; the batch is padded by the
model, see ``MODEL.VLTDET.SQUARE_PAD``). Inference: shortest-edge resize to ``INPUT.MIN_SIZE_TEST``
capped at ``INPUT.MAX_SIZE_TEST``.
"""
import pycocotools.mask as mask_util
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from vlt_common.data.mapper_registry import DATASET_MAPPER_REGISTRY

__all__ = ["LSJDatasetMapper", "build_lsj_augmentation", "detection_lsj"]


def build_lsj_augmentation(cfg, is_train):
    """
    Args:
        cfg (CfgNode): reads ``INPUT.LSJ.{IMAGE_SIZE, MIN_SCALE, MAX_SCALE}`` and
            ``INPUT.RANDOM_FLIP`` (training), ``INPUT.{MIN,MAX}_SIZE_TEST`` (inference).
        is_train (bool):

    Returns:
        list[Augmentation]
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    lsj = cfg.INPUT.LSJ
    if not 0 < lsj.MIN_SCALE <= lsj.MAX_SCALE:
        raise ValueError(
            "INPUT.LSJ needs 0 < MIN_SCALE <= MAX_SCALE, got "
            f"MIN_SCALE={lsj.MIN_SCALE}, MAX_SCALE={lsj.MAX_SCALE}"
        )
    if lsj.IMAGE_SIZE <= 0:
        raise ValueError(f"INPUT.LSJ.IMAGE_SIZE must be > 0, got {lsj.IMAGE_SIZE}")
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    augs += [
        T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, lsj.IMAGE_SIZE, lsj.IMAGE_SIZE),
        T.FixedSizeCrop((lsj.IMAGE_SIZE, lsj.IMAGE_SIZE), pad=False),
    ]
    return augs


class LSJDatasetMapper(DatasetMapper):
    """
    Detectron2's :class:`DatasetMapper` with the LSJ augmentation, for Mask R-CNN and box-only
    training.

    With instance masks (``MODEL.MASK_ON``), polygons are rasterized to bitmasks before the
    augmentation: cropping polygons would need ``shapely``, which VLT does not depend on, and the
    boxes are then recomputed from the cropped masks (a crop cuts the object, not its box). Every
    annotation must then carry a ``"segmentation"``; datasets without masks train with
    ``MODEL.MASK_ON False``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str,
        use_instance_mask: bool = False,
    ):
        """
        Args:
            is_train: training (augmentation, targets kept) or inference.
            augmentations: applied in order (see :func:`build_lsj_augmentation`).
            image_format: format given to ``detection_utils.read_image`` ("RGB", "BGR", ...).
            use_instance_mask: produce ``gt_masks`` (as :class:`BitMasks`) and box targets that
                are tight around the augmented masks.
        """
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            use_instance_mask=use_instance_mask,
            instance_mask_format="bitmask",
            recompute_boxes=use_instance_mask and is_train,
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
        }

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image in Detectron2's dataset format (not modified).

        Returns:
            dict: ``"image"`` (uint8 Tensor [C, H, W]), and when training ``"instances"`` with
            ``gt_boxes``, ``gt_classes`` and, with masks, ``gt_masks``.
        """
        if self.is_train and self.use_instance_mask:
            dataset_dict = _rasterize_polygons(dataset_dict)
        return super().__call__(dataset_dict)


def _rasterize_polygons(dataset_dict):
    """Return a shallow copy of ``dataset_dict`` whose polygon segmentations are RLE dicts."""
    annos = dataset_dict.get("annotations", [])
    missing = sum("segmentation" not in a for a in annos)
    if missing:
        raise ValueError(
            f"{dataset_dict.get('file_name')}: {missing} of {len(annos)} annotations have no "
            "'segmentation', but MODEL.MASK_ON is True. Train box-only with MODEL.MASK_ON False."
        )
    height, width = dataset_dict["height"], dataset_dict["width"]
    converted = []
    for anno in annos:
        segm = anno["segmentation"]
        if isinstance(segm, list):
            rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
            anno = dict(anno, segmentation=rle)
        converted.append(anno)
    return dict(dataset_dict, annotations=converted)


@DATASET_MAPPER_REGISTRY.register()
def detection_lsj(cfg, is_train):
    """
    The ``"detection_lsj"`` entry of ``DATASET_MAPPER_REGISTRY`` (``INPUT.DATASET_MAPPER_NAME``).

    Returns:
        LSJDatasetMapper
    """
    return LSJDatasetMapper(cfg, is_train)
