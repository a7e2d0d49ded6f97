"""Augmentations of the semantic-segmentation training pipeline that Detectron2 does not ship.

- :class:`RandomRescale`: resize by a random factor of the image's own size.
- :func:`short_edge_choice_resize`: official Rein's training resize (mmseg's
  ``RandomChoiceResize`` over ``ResizeShortestEdge``), a short edge drawn from a list.
- :class:`PhotometricDistortion`: mmsegmentation's ``PhotoMetricDistortion`` (random brightness,
  contrast, saturation and hue) as a Detectron2 :class:`~detectron2.data.transforms.Augmentation`
  that returns a deterministic :class:`PhotometricDistortionTransform`.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform
from PIL import Image

__all__ = [
    "RandomRescale",
    "short_edge_choice_resize",
    "PhotometricDistortion",
    "PhotometricDistortionTransform",
]


class RandomRescale(T.Augmentation):
    """
    Resize an image by a factor drawn uniformly from ``[min_scale, max_scale]``, keeping its aspect
    ratio. Use :class:`detectron2.data.transforms.ResizeScale` instead when the factor should be
    relative to a fixed target size.
    """

    def __init__(self, min_scale: float, max_scale: float):
        """
        Args:
            min_scale, max_scale (float): range of the scale factor, ``0 < min <= max``.
        """
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got ({min_scale}, {max_scale})")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        new_h, new_w = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


def short_edge_choice_resize(short_edges: Sequence[int], max_size: int) -> T.Augmentation:
    """
    Official Rein's training resize: mmseg's ``RandomChoiceResize(scales=short_edges,
    resize_type="ResizeShortestEdge", max_size=max_size)``. One short-edge length is drawn
    uniformly from ``short_edges``; the image is scaled (aspect ratio kept) so that its short edge
    has that length, and scaled down further if its long edge would exceed ``max_size``; sizes
    round half up. Detectron2's :class:`~detectron2.data.transforms.ResizeShortestEdge` with
    ``sample_style="choice"`` computes exactly this size, so it is returned (bilinear images,
    nearest labels).

    Args:
        short_edges (sequence[int]): candidate short-edge lengths in pixels (Rein:
            ``int(512 * x * 0.1) for x in 5..20``, i.e. 256, 307, ..., 1024).
        max_size (int): cap of the long edge in pixels (Rein: 2048).

    Returns:
        Augmentation
    """
    edges = [int(e) for e in short_edges]
    if not edges or any(e <= 0 or e != s for e, s in zip(edges, short_edges)):
        raise ValueError(
            f"INPUT.MIN_SIZE_TRAIN must list positive integer short-edge lengths, got "
            f"{list(short_edges)}"
        )
    if max_size < max(edges):
        raise ValueError(
            f"INPUT.MAX_SIZE_TRAIN ({max_size}) must be at least the largest short edge "
            f"({max(edges)})"
        )
    return T.ResizeShortestEdge(edges, max_size, sample_style="choice")


class PhotometricDistortionTransform(Transform):
    """
    Deterministic photometric distortion of a uint8 image (the drawn parameters of
    :class:`PhotometricDistortion`). Geometry, coordinates and segmentation are unchanged.

    The order follows mmsegmentation: brightness, contrast (if ``contrast_first``), saturation,
    hue, contrast (otherwise). Every step clips to [0, 255] and rounds back to uint8, like mmseg.
    Saturation and hue are changed in PIL's 8-bit HSV space.
    """

    def __init__(
        self,
        *,
        brightness_delta: Optional[float],
        contrast_alpha: Optional[float],
        contrast_first: bool,
        saturation_alpha: Optional[float],
        hue_shift: Optional[int],
        image_format: str = "RGB",
    ):
        """
        Args:
            brightness_delta (float or None): value added to every pixel; None skips the step.
            contrast_alpha (float or None): factor every pixel is multiplied with; None skips.
            contrast_first (bool): change the contrast before (True) or after (False) the colour.
            saturation_alpha (float or None): factor of the HSV saturation; None skips.
            hue_shift (int or None): shift of the hue in PIL's 0..255 hue units (wraps around);
                None skips.
            image_format (str): channel order of the images, "RGB" or "BGR".
        """
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"PhotometricDistortion supports RGB or BGR images, got {image_format!r}"
            )
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"PhotometricDistortion expects a uint8 HxWx3 image, got {img.dtype} {img.shape}"
            )
        if self.brightness_delta is not None:
            img = _affine(img, 1.0, self.brightness_delta)
        if self.contrast_first and self.contrast_alpha is not None:
            img = _affine(img, self.contrast_alpha, 0.0)
        if self.saturation_alpha is not None or self.hue_shift is not None:
            img = self._change_color(img)
        if not self.contrast_first and self.contrast_alpha is not None:
            img = _affine(img, self.contrast_alpha, 0.0)
        return img

    def _change_color(self, img: np.ndarray) -> np.ndarray:
        rgb = img if self.image_format == "RGB" else img[:, :, ::-1]
        hsv = np.array(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"))
        if self.saturation_alpha is not None:
            hsv[:, :, 1] = _affine(hsv[:, :, 1], self.saturation_alpha, 0.0)
        if self.hue_shift is not None:
            # uint8 arithmetic wraps modulo 256, i.e. around the hue circle.
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + self.hue_shift) % 256
        rgb = np.array(Image.fromarray(hsv, mode="HSV").convert("RGB"))
        return rgb if self.image_format == "RGB" else np.ascontiguousarray(rgb[:, :, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        raise NotImplementedError("a photometric distortion cannot be inverted")


def _affine(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).round().astype(np.uint8)


class PhotometricDistortion(T.Augmentation):
    """
    mmsegmentation's ``PhotoMetricDistortion``: each of brightness, contrast, saturation and hue
    is changed with probability 1/2; contrast goes first or last with probability 1/2.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        image_format: str = "RGB",
    ):
        """
        Args:
            brightness_delta (float): brightness offsets are drawn from [-delta, delta] (pixel
                values 0..255).
            contrast_range, saturation_range (tuple[float, float]): ranges of the factors.
            hue_delta (int): hue shifts are drawn from [-delta, delta] in OpenCV's 0..180 hue
                units (mmseg's unit; 18 = 36 degrees).
            image_format (str): "RGB" or "BGR".
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        rng = np.random
        brightness = None
        if rng.randint(2):
            brightness = rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = bool(rng.randint(2))
        contrast = rng.uniform(*self.contrast_range) if rng.randint(2) else None
        saturation = rng.uniform(*self.saturation_range) if rng.randint(2) else None
        hue = None
        if rng.randint(2):
            # OpenCV's hue runs over 0..180, PIL's over 0..256.
            hue = int(round(rng.randint(-self.hue_delta, self.hue_delta + 1) * 256 / 180))
        return PhotometricDistortionTransform(
            brightness_delta=brightness,
            contrast_alpha=contrast,
            contrast_first=contrast_first,
            saturation_alpha=saturation,
            hue_shift=hue,
            image_format=self.image_format,
        )
