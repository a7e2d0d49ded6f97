"""One SynthDG scene: its layout, its renderings in several domains and its instance annotations.

Randomness is split into independent streams seeded by (spec seed, split, scene index, stream):
the layout, the texture noise (shared by all domains of the scene) and one stream per domain.
A scene therefore does not depend on the scenes before it (parallel generation gives the same
bytes), and adding a domain never changes the others.
"""
import dataclasses

import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

from vlt_common.label_spaces import THING_TRAIN_IDS

from .layout import make_layout
from .render import SceneGeometry, render_appearance
from .spec import DOMAINS, SPLITS
from .styles import PALETTE, SOURCE
from .weather import WEATHER

__all__ = ["Scene", "synthesize_scene", "scene_rng"]

# Stream ids (the last entry of the seed sequence); domains use 10 + their index in DOMAINS.
_LAYOUT_STREAM, _TEXTURE_STREAM, _DOMAIN_STREAM0 = 0, 1, 10
# Sensor noise of the daylight renderings (the night style adds its own, stronger one).
_DAY_NOISE = 0.01
# Instances smaller than this fraction of the image (16 pixels at 256x512, at least 4 pixels)
# are left unannotated; their pixels keep their class in the label map.
_MIN_AREA_FRACTION = 16.0 / (256 * 512)

@dataclasses.dataclass
class Scene:
    """
    Attributes:
        label (np.ndarray): uint8 [H, W] train ids.
        images (dict[str, np.ndarray]): domain -> uint8 [H, W, 3] RGB rendering.
        annotations (list[dict]): per visible instance: "bbox" [x0, y0, x1, y1] (XYXY_ABS,
            pixel edges), "category_id" (0..7, index into THING_CLASSES), "segmentation" (COCO
            RLE with a str "counts"), "area" (pixels).
    """

    label: np.ndarray
    images: dict
    annotations: list

def scene_rng(seed, split, index, stream):
    """The generator of one randomness stream of one scene."""
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])

def synthesize_scene(spec, split, index, domains):
    """
    Build scene ``index`` of ``split`` and render it in ``domains``.

    Args:
        spec (SynthDGSpec): seed and size.
        split (str): "train" or "val".
        index (int): scene index within the split.
        domains (Sequence[str]): domains to render (names from ``DOMAINS``).

    Returns:
        Scene
    """
    layout_rng = scene_rng(spec.seed, split, index, _LAYOUT_STREAM)
    layout = make_layout(layout_rng, spec.height, spec.width)
    geom = SceneGeometry(layout, scene_rng(spec.seed, split, index, _TEXTURE_STREAM))
    images, daylight = {}, None
    for domain in domains:
        rng = scene_rng(spec.seed, split, index, _DOMAIN_STREAM0 + DOMAINS.index(domain))
        if domain == "palette":
            image = render_appearance(geom, PALETTE)
        else:
            if daylight is None:
                daylight = render_appearance(geom, SOURCE)
            image = daylight if domain == "source" else WEATHER[domain](daylight, geom, rng, SOURCE)
        if domain != "night":
            image = image + _DAY_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
        images[domain] = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Scene(label=layout.label, images=images, annotations=_annotations(layout))

def _annotations(layout):
    """COCO-style annotations of the visible part of every instance."""
    instance_map = layout.instance_map
    h, w = instance_map.shape
    min_area = max(4, int(round(_MIN_AREA_FRACTION * h * w)))
    # find_objects numbers labels from 1; instance -1 (stuff) becomes 0, i.e. background.
    shifted = instance_map + 1
    boxes = ndimage.find_objects(shifted, max_label=len(layout.instance_classes))
    areas = np.bincount(shifted.ravel(), minlength=len(layout.instance_classes) + 1)[1:]
    annotations = []
    for k, box in enumerate(boxes):
        if box is None or areas[k] < min_area:
            continue
        rows, cols = box
        mask = np.zeros((h, w), np.uint8, order="F")
        mask[rows, cols] = shifted[rows, cols] == k + 1
        rle = mask_util.encode(mask)
        annotations.append(
            {
                "bbox": [cols.start, rows.start, cols.stop, rows.stop],
                "category_id": THING_TRAIN_IDS.index(layout.instance_classes[k]),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(areas[k]),
            }
        )
    return annotations
