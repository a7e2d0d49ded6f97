"""Corruption robustness (Cityscapes-C style) as ordinary test domains.

A registered semantic-segmentation dataset ``<base>`` gets corrupted copies named
``<base>_c_<corruption>_<severity>`` (e.g. ``cityscapes_val_c_fog_3``,
``synthdg_source_val_c_gaussian_noise_5``): the same images and labels, each image corrupted on
the fly by the ``imagecorruptions`` package (Hendrycks & Dietterich 2019; Michaelis et al. 2019) at
severity 1..5 when the mapper reads it. Nothing is written to disk. The corruption is
deterministic per image: the random state is seeded from the image's file name (not its folder),
the corruption and the severity, so two runs (and two machines) see the same pixels.

The names are registered on demand by :func:`register_corrupted_datasets` (the trainer calls it
with ``DATASETS.TEST``), so no list of 19 x 5 names per dataset clutters the catalog. Each
corrupted dataset dict carries ``"corruption": {"name", "severity"}``; a mapper applies it by
reading its image with :func:`read_dataset_image` instead of ``read_image``.
"""
import functools
import hashlib
import os
import re
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image

from vlt_common.data.io import read_image

__all__ = [
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CORRUPTIONS",
    "SEVERITIES",
    "check_corruption",
    "corrupt_image",
    "corrupted_name",
    "parse_corrupted_name",
    "read_dataset_image",
    "register_corrupted_dataset",
    "register_corrupted_datasets",
]

# The 15 corruptions of ImageNet-C / Cityscapes-C (noise, blur, weather, digital), in the order of
# imagecorruptions.get_corruption_names("common").
COMMON_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# The 4 held-out ("validation") corruptions of imagecorruptions.get_corruption_names("validation").
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)

_NAME = re.compile(r"^(?P<base>.+)_c_(?P<corruption>[a-z_]+?)_(?P<severity>\d+)$")


def corrupted_name(base: str, corruption: str, severity: int) -> str:
    """The registered name of ``base`` under ``corruption`` at ``severity``."""
    return f"{base}_c_{corruption}_{severity}"


def parse_corrupted_name(name: str) -> Optional[Dict]:
    """
    Split a corrupted dataset name.

    Args:
        name (str): e.g. "cityscapes_val_c_gaussian_noise_3".

    Returns:
        dict or None: {"base", "corruption", "severity"} when ``name`` has the form
        ``<base>_c_<corruption>_<severity>``, else None (the corruption and severity are not
        checked here).
    """
    match = _NAME.match(name)
    if match is None:
        return None
    return {
        "base": match["base"],
        "corruption": match["corruption"],
        "severity": int(match["severity"]),
    }


def check_corruption(corruption: str, severity: int, what: str) -> None:
    """Raise ValueError (starting with ``what``) unless ``corruption`` is one of
    :data:`CORRUPTIONS` and ``severity`` one of :data:`SEVERITIES`."""
    if corruption not in CORRUPTIONS:
        raise ValueError(
            f"{what}: unknown corruption {corruption!r}; the imagecorruptions package has "
            f"{', '.join(CORRUPTIONS)}"
        )
    if severity not in SEVERITIES:
        raise ValueError(f"{what}: severity must be one of {SEVERITIES}, got {severity}")


@functools.lru_cache(maxsize=1)
def _corrupt_fn():
    try:
        with warnings.catch_warnings():
            # imagecorruptions 1.1.2 imports pkg_resources (for its frost images) and
            # scipy.ndimage.interpolation, both deprecated.
            warnings.simplefilter("ignore")
            import imagecorruptions
            from imagecorruptions import corruptions as impl
    except ImportError as e:
        raise ImportError(
            "corrupted test domains need the imagecorruptions package: "
            "pip install --no-deps imagecorruptions==1.1.2 (see requirements.txt)"
        ) from e
    _patch_gaussian(impl)
    return imagecorruptions.corrupt


def _patch_gaussian(impl):
    """imagecorruptions 1.1.2 blurs colour images with scikit-image's ``gaussian(...,
    multichannel=True)``; scikit-image >= 0.19 names that argument ``channel_axis=-1`` and removed
    the old one. Translate it in the package's own namespace (same blur, same numbers)."""
    gaussian = impl.gaussian
    if getattr(gaussian, "_vlt_channel_axis", False):
        return

    def compat_gaussian(image, *args, multichannel=False, **kwargs):
        if multichannel:
            kwargs.setdefault("channel_axis", -1)
        return gaussian(image, *args, **kwargs)

    compat_gaussian._vlt_channel_axis = True
    impl.gaussian = compat_gaussian


def _seed(file_name: str, corruption: str, severity: int) -> int:
    """A 32-bit seed from the file's name (not its folder), the corruption and the severity."""
    key = f"{os.path.basename(file_name)}|{corruption}|{severity}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """
    Corrupt one RGB image with the imagecorruptions package, reproducibly.

    The package draws from NumPy's global random state; it is seeded with ``seed`` for this call
    and restored afterwards, so other users of the global state are not affected.

    Args:
        image (np.ndarray): HxWx3 uint8 RGB image, H and W at least 32.
        corruption (str): one of :data:`CORRUPTIONS`.
        severity (int): 1..5.
        seed (int): 0 <= seed < 2**32.

    Returns:
        np.ndarray: HxWx3 uint8 RGB, the same size as ``image``.
    """
    check_corruption(corruption, severity, "corrupt_image")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"corrupt_image needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}"
        )
    corrupt = _corrupt_fn()
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = corrupt(
                np.ascontiguousarray(image), severity=severity, corruption_name=corruption
            )
    finally:
        np.random.set_state(state)
    if out.shape != image.shape:
        raise RuntimeError(
            f"imagecorruptions' {corruption} returned shape {out.shape} for an image of shape "
            f"{image.shape}"
        )
    return out


def read_dataset_image(dataset_dict: Dict, image_format: Optional[str] = None) -> np.ndarray:
    """
    Read the image of a dataset dict, corrupted when the dict has ``"corruption"``.

    Any mapper supports corrupted domains by reading its image with this function in place of
    :func:`vlt_common.data.io.read_image` (the semantic mapper of VLTSeg does).

    Args:
        dataset_dict (dict): with "file_name" and, for a corrupted domain, "corruption":
            {"name": str, "severity": int}.
        image_format (str or None): as for :func:`vlt_common.data.io.read_image`.

    Returns:
        np.ndarray: HxWxC uint8 image in ``image_format``.
    """
    spec = dataset_dict.get("corruption")
    file_name = dataset_dict["file_name"]
    if spec is None:
        return read_image(file_name, image_format)
    name, severity = spec["name"], spec["severity"]
    image = read_image(file_name, "RGB")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"{file_name}: imagecorruptions needs images of at least 32x32 pixels")
    out = corrupt_image(image, name, severity, _seed(file_name, name, severity))
    return convert_PIL_to_numpy(Image.fromarray(out), image_format)


def _load_corrupted(base: str, corruption: str, severity: int) -> List[Dict]:
    dicts = DatasetCatalog.get(base)
    spec = {"name": corruption, "severity": severity}
    return [dict(d, corruption=dict(spec)) for d in dicts]


def register_corrupted_dataset(base: str, corruption: str, severity: int) -> str:
    """
    Register ``<base>_c_<corruption>_<severity>``: the images and labels of ``base``, corrupted.

    Its metadata is the base dataset's, plus ``corruption``, ``severity``, ``clean_dataset``
    (the base name) and ``domain`` "<base domain> + <corruption> <severity>".

    Args:
        base (str): a registered semantic-segmentation dataset (evaluator_type "dg_sem_seg").
        corruption (str): one of :data:`CORRUPTIONS`.
        severity (int): 1..5.

    Returns:
        str: the registered name.

    Raises:
        KeyError: ``base`` is not registered.
        ValueError: unknown corruption or severity, or ``base`` is not a semantic dataset.
    """
    name = corrupted_name(base, corruption, severity)
    check_corruption(corruption, severity, name)
    if base not in DatasetCatalog.list():
        raise KeyError(f"{name}: the clean dataset {base!r} is not registered")
    meta = MetadataCatalog.get(base).as_dict()
    if meta.get("evaluator_type") != "dg_sem_seg":
        raise ValueError(
            f"{name}: corrupted domains exist for semantic-segmentation datasets (evaluator_type "
            f"'dg_sem_seg'); {base!r} has {meta.get('evaluator_type')!r}"
        )
    if name in DatasetCatalog.list():
        return name
    DatasetCatalog.register(name, functools.partial(_load_corrupted, base, corruption, severity))
    meta.pop("name", None)
    meta.update(
        corruption=corruption,
        severity=severity,
        clean_dataset=base,
        domain=f"{meta.get('domain', base)} + {corruption} {severity}",
    )
    MetadataCatalog.get(name).set(**meta)
    return name


def register_corrupted_datasets(names: Sequence[str]) -> List[str]:
    """
    Register every name of ``names`` of the form ``<base>_c_<corruption>_<severity>`` that is not
    registered yet; other names are left alone. Call it with ``DATASETS.TEST`` before building
    loaders or evaluators (``VLTTrainer.test`` does).

    Returns:
        list[str]: the names registered by this call.

    Raises:
        ValueError / KeyError: a corrupted name with an unknown corruption, a severity outside
            1..5 or a clean dataset that is not registered; the message names it.
    """
    registered = []
    known = set(DatasetCatalog.list())
    for name in names:
        parsed = parse_corrupted_name(name)
        if name in known or parsed is None:
            continue
        registered.append(
            register_corrupted_dataset(parsed["base"], parsed["corruption"], parsed["severity"])
        )
        known.add(name)
    return registered
