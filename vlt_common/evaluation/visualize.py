"""Prediction overlays: the image, the prediction and the ground truth side by side."""
import numpy as np

__all__ = ["colorize_sem_seg", "sem_seg_panels"]


def colorize_sem_seg(label, colors, ignore_label=255):
    """
    Paint a label map with one colour per class.

    Args:
        label (np.ndarray): int [H, W] class ids (``ignore_label`` allowed).
        colors (Sequence[Sequence[int]]): RGB per class id.
        ignore_label (int): painted black.

    Returns:
        np.ndarray: uint8 [H, W, 3].
    """
    palette = np.zeros((max(len(colors), ignore_label + 1), 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8).reshape(-1, 3)
    palette[ignore_label] = 0
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= len(palette)):
        raise ValueError(
            f"label values must be in 0..{len(colors) - 1} or {ignore_label}, got "
            f"{label.min()}..{label.max()}"
        )
    return palette[label]


def sem_seg_panels(image, pred, gt, colors, ignore_label=255, alpha=0.6):
    """
    Image | prediction | ground truth, the label maps blended over the image.

    Args:
        image (np.ndarray): uint8 [H, W, 3] RGB.
        pred (np.ndarray): int [H, W] predicted class ids.
        gt (np.ndarray): int [H, W] ground-truth ids; ignored pixels show the plain image.
        colors (Sequence): RGB per class.
        ignore_label (int): ignore value in ``gt``.
        alpha (float): weight of the class colours in the blend.

    Returns:
        np.ndarray: uint8 [H, 3W, 3].
    """
    if image.shape[:2] != pred.shape or pred.shape != gt.shape:
        raise ValueError(
            f"image {image.shape[:2]}, prediction {pred.shape} and ground truth {gt.shape} "
            "must have the same size"
        )
    base = image.astype(np.float32)

    def blend(label, valid):
        colour = colorize_sem_seg(label, colors, ignore_label).astype(np.float32)
        out = np.where(valid[..., None], (1 - alpha) * base + alpha * colour, base)
        return (out + 0.5).astype(np.uint8)

    pred_panel = blend(pred, np.ones(pred.shape, bool))
    gt_panel = blend(gt, gt != ignore_label)
    return np.concatenate([image, pred_panel, gt_panel], axis=1)

