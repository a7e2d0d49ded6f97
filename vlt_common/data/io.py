"""Reading images and label maps with errors that name the file.

Every loader, mapper and evaluator reads pixels through these two functions, so that a corrupt
file, a label map that does not match its image or label ids outside the label space are reported
the same way everywhere: unreadable or mismatched files raise a ``ValueError`` naming the file;
out-of-range label ids become the ignore label and are counted in a warning naming the file.
"""
import logging
import warnings
from typing import Optional, Sequence

import numpy as np
from detectron2.data import detection_utils
from PIL import Image
from torchvision.io import ImageReadMode, decode_png, read_file

__all__ = ["read_image", "read_label_ids", "read_sem_seg", "read_synthia_label"]

logger = logging.getLogger(__name__)

# PIL modes a label map may have: one channel of integer ids ("P" is a palette image, whose pixel
# values are the ids and whose palette is only for display).
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")

# What PIL raises on a file it cannot decode: UnidentifiedImageError and "image file is truncated"
# are OSErrors; some broken PNG chunks raise SyntaxError; bad headers raise ValueError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)


def read_image(path: str, format: Optional[str] = None) -> np.ndarray:
    """
    Read an image file (EXIF orientation applied), like Detectron2's ``read_image``.

    Args:
        path (str): image file.
        format (str or None): "RGB", "BGR", "L" or another PIL mode; None keeps the file's mode.

    Returns:
        np.ndarray: HxWxC uint8 image (C=1 for "L").

    Raises:
        ValueError: the file does not exist or is not a readable image; the message names it.
    """
    try:
        image = detection_utils.read_image(path, format)
    except FileNotFoundError as e:
        raise ValueError(f"cannot read image {path}: no such file") from e
    except _DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {path}: not a valid image file ({e})") from e
    if image.ndim == 2:
        image = image[:, :, None]
    return image


def read_label_ids(path: str) -> np.ndarray:
    """
    Read a single-channel label map as stored, without any remapping.

    Args:
        path (str): PNG (or other PIL-readable) file with one channel of integer ids.

    Returns:
        np.ndarray: HxW array of ids (uint8 for 8-bit files, uint16 or int32 for wider ones).

    Raises:
        ValueError: the file is missing, unreadable, or not a single-channel id map.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in _LABEL_MODES:
                raise ValueError(
                    f"label map {path} has PIL mode {img.mode!r}; expected one channel of ids "
                    f"(modes {', '.join(_LABEL_MODES)}), not a colour image"
                )
            ids = np.asarray(img)
    except FileNotFoundError as e:
        raise ValueError(f"cannot read label map {path}: no such file") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read label map {path}: not a valid image file ({e})") from e
    return ids


def read_sem_seg(
    path: str,
    num_classes: int,
    ignore_label: int = 255,
    expected_hw: Optional[Sequence[int]] = None,
    *,
    image_file: Optional[str] = None,
) -> np.ndarray:
    """
    Read a train-id label map and make every value a class id or the ignore label.

    Values ``>= num_classes`` (or negative) other than ``ignore_label`` are set to
    ``ignore_label``; their pixel count is logged as a warning that names the file.

    Args:
        path (str): label map with train ids (0..num_classes-1, ignore_label).
        num_classes (int): size of the label space.
        ignore_label (int): value of pixels without a class.
        expected_hw (tuple[int, int] or None): (height, width) of the image the labels belong to.
        image_file (str or None): that image's path, only used in the error message.

    Returns:
        np.ndarray: HxW label map; uint8 when the label space and ignore label fit in 8 bits
        (every Cityscapes-style set), int64 otherwise.

    Raises:
        ValueError: the file is unreadable or not single-channel, or its size differs from
            ``expected_hw``; the message names the file(s) and both shapes.
    """
    ids = read_label_ids(path)
    if expected_hw is not None and tuple(ids.shape) != tuple(expected_hw):
        image = f"its image {image_file}" if image_file else "its image"
        raise ValueError(
            f"label map {path} has size (h, w)={tuple(ids.shape)} but {image} has "
            f"(h, w)={tuple(expected_hw)}"
        )
    ids = ids.astype(np.int64, copy=False)
    outside = ((ids < 0) | (ids >= num_classes)) & (ids != ignore_label)
    num_outside = int(np.count_nonzero(outside))
    if num_outside:
        values = np.unique(ids[outside])
        logger.warning(
            "%s: %d pixels have label ids outside 0..%d (values %s%s); they are set to ignore (%d)",
            path, num_outside, num_classes - 1, values[:10].tolist(),
            " ..." if len(values) > 10 else "", ignore_label,
        )
        ids = np.where(outside, ignore_label, ids)
    fits_uint8 = num_classes <= 256 and 0 <= ignore_label <= 255
    return ids.astype(np.uint8) if fits_uint8 else ids


def read_synthia_label(path: str) -> np.ndarray:
    """
    Read a SYNTHIA ``GT/LABELS`` file: a 16-bit PNG whose first channel is the class id (the
    second is the instance id). PIL would truncate 16-bit colour PNGs to 8 bits, so torchvision
    decodes it (its image codecs are deprecated in favour of torchcodec, which is not a
    dependency; the deprecation notice is silenced here, where the call is deliberate).

    Args:
        path (str): the label file.

    Returns:
        np.ndarray: HxW uint16 class ids.

    Raises:
        ValueError: the file is missing or not a PNG; the message names it.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            label = decode_png(read_file(path), ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise ValueError(f"cannot read SYNTHIA label {path}: {e}") from e
    return label[0].numpy()
