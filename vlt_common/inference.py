"""Dense inference strategies that work with any semantic-segmentation model: whole image,
sliding window, and multi-scale + flip test-time augmentation.

Every function takes a *score function*: a callable that maps a batch of normalized images
``[B, 3, h, w]`` (``h`` and ``w`` multiples of the model's size divisibility) to per-class scores
``[B, K, h, w]`` at the same resolution. The functions return scores ``[B, K, H, W]`` for the
``H x W`` images they were given; averaging (of overlapping windows and of augmented views) is done
on these scores, as mmsegmentation does.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "ScoreFn",
    "SlidingWindow",
    "whole_inference",
    "sliding_window_inference",
    "tta_inference",
    "dense_inference",
]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SlidingWindow:
    """
    Sliding-window settings (``TEST.SLIDING_WINDOW``).

    Attributes:
        crop_size (tuple[int, int]): window (h, w) in pixels.
        stride (tuple[int, int]): step (h, w) between windows; at most the window size, so that
            the windows cover the image.
        batch_size (int): windows per call of the score function.
    """

    crop_size: Tuple[int, int]
    stride: Tuple[int, int]
    batch_size: int = 1

    def __post_init__(self):
        ch, cw = self.crop_size
        sh, sw = self.stride
        if min(ch, cw, sh, sw, self.batch_size) <= 0:
            raise ValueError(f"sliding window sizes must be positive, got {self}")
        if sh > ch or sw > cw:
            raise ValueError(
                f"sliding-window stride {self.stride} larger than the window {self.crop_size} "
                "would leave pixels without a prediction"
            )


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor if divisor > 1 else value


def _pad_bottom_right(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    # Zero is the pixel mean after normalization, the same padding as the model's ImageList.
    return F.pad(images, (0, width - w, 0, height - h), value=0.0)


def whole_inference(
    score_fn: ScoreFn, images: torch.Tensor, *, size_divisibility: int = 0
) -> torch.Tensor:
    """
    One forward pass over the whole image, padded at the bottom/right to the divisibility.

    Args:
        score_fn (ScoreFn): see the module docstring.
        images (Tensor): normalized images [B, 3, H, W].
        size_divisibility (int): pad H and W to a multiple of this (0 or 1: no padding).

    Returns:
        Tensor: scores [B, K, H, W].
    """
    h, w = images.shape[-2:]
    padded = _pad_bottom_right(
        images, _round_up(h, size_divisibility), _round_up(w, size_divisibility)
    )
    return score_fn(padded)[..., :h, :w]


def _window_starts(length: int, crop: int, stride: int) -> List[int]:
    # mmsegmentation's grid: windows every `stride` pixels, the last one shifted back so that it
    # ends at the border; one window if the image is not larger than the crop.
    num = max(length - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, max(length - crop, 0)) for i in range(num)]


def sliding_window_inference(
    score_fn: ScoreFn,
    images: torch.Tensor,
    *,
    window: SlidingWindow,
    size_divisibility: int = 0,
) -> torch.Tensor:
    """
    Predict overlapping windows and average the scores where they overlap.

    Windows of all images in the batch are evaluated ``window.batch_size`` at a time. A window
    that is smaller than ``crop_size`` (the image is smaller than the window) is padded to it, so
    the score function always sees the same input size (``crop_size`` rounded up to
    ``size_divisibility``).

    Args:
        score_fn (ScoreFn): see the module docstring.
        images (Tensor): normalized images [B, 3, H, W].
        window (SlidingWindow): window size, stride and batch size.
        size_divisibility (int): the score function's input is padded to a multiple of this.

    Returns:
        Tensor: scores [B, K, H, W].
    """
    num_images, _, height, width = images.shape
    crop_h, crop_w = window.crop_size
    win_h, win_w = min(crop_h, height), min(crop_w, width)
    in_h, in_w = _round_up(crop_h, size_divisibility), _round_up(crop_w, size_divisibility)
    ys = _window_starts(height, crop_h, window.stride[0])
    xs = _window_starts(width, crop_w, window.stride[1])
    boxes = [(b, y, x) for b in range(num_images) for y in ys for x in xs]

    scores = None
    count = images.new_zeros((1, 1, height, width))
    for y in ys:
        for x in xs:
            count[..., y : y + win_h, x : x + win_w] += 1
    for start in range(0, len(boxes), window.batch_size):
        chunk = boxes[start : start + window.batch_size]
        crops = torch.stack([images[b, :, y : y + win_h, x : x + win_w] for b, y, x in chunk])
        out = score_fn(_pad_bottom_right(crops, in_h, in_w))
        if scores is None:
            scores = out.new_zeros((num_images, out.shape[1], height, width))
        for (b, y, x), crop_scores in zip(chunk, out):
            scores[b, :, y : y + win_h, x : x + win_w] += crop_scores[:, :win_h, :win_w]
    return scores / count


def tta_inference(
    infer_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """
    Multi-scale (and horizontal-flip) test-time augmentation: run ``infer_fn`` on the image
    resized by every scale (and on its mirror image), bring the scores back to the input size and
    orientation, and average them.

    Args:
        infer_fn (callable): normalized images [B, 3, h, w] of any size -> scores [B, K, h, w]
            (e.g. :func:`whole_inference` or :func:`sliding_window_inference` with their options
            bound by ``functools.partial``).
        images (Tensor): normalized images [B, 3, H, W].
        scales (sequence[float]): resize factors of the image.
        flip (bool): also evaluate the horizontally flipped views.

    Returns:
        Tensor: scores [B, K, H, W], the mean over ``len(scales) * (2 if flip else 1)`` views.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"TTA scales must be a non-empty list of positive factors, got {scales}")
    height, width = images.shape[-2:]
    total, num_views = None, 0
    for scale in scales:
        size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        resized = images
        if size != (height, width):
            resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            out = infer_fn(resized.flip(-1) if flipped else resized)
            if flipped:
                out = out.flip(-1)
            if size != (height, width):
                out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
            total = out if total is None else total + out
            num_views += 1
    return total / num_views


def dense_inference(
    score_fn: ScoreFn,
    images: torch.Tensor,
    *,
    size_divisibility: int = 0,
    sliding_window: Optional[SlidingWindow] = None,
    tta_scales: Sequence[float] = (),
    tta_flip: bool = False,
) -> torch.Tensor:
    """
    The inference a config asks for: whole image or sliding window, optionally inside TTA.

    Args:
        score_fn (ScoreFn): see the module docstring.
        images (Tensor): normalized images [B, 3, H, W].
        size_divisibility (int): padding multiple of the score function's input.
        sliding_window (SlidingWindow or None): None runs on the whole image.
        tta_scales (sequence[float]): TTA scales; empty (and ``tta_flip`` False) disables TTA.
        tta_flip (bool): add horizontally flipped views to the TTA.

    Returns:
        Tensor: scores [B, K, H, W].
    """

    def infer(x: torch.Tensor) -> torch.Tensor:
        if sliding_window is None:
            return whole_inference(score_fn, x, size_divisibility=size_divisibility)
        return sliding_window_inference(
            score_fn, x, window=sliding_window, size_divisibility=size_divisibility
        )

    if not tta_scales and not tta_flip:
        return infer(images)
    return tta_inference(infer, images, scales=tuple(tta_scales) or (1.0,), flip=tta_flip)
