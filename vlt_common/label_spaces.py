"""The label spaces VLT trains and evaluates in: class names, colours and the ignore value.

A plain table with no imports, so that models (e.g. VLTSeg's default class names) can read it
without registering datasets or loading the data stack. The maps from each dataset's own ids into
these spaces live with the datasets (:mod:`vlt_common.data.datasets.builtin_meta`).
"""

__all__ = [
    "CITYSCAPES_19_CLASSES",
    "CITYSCAPES_19_COLORS",
    "IGNORE_LABEL",
    "THING_CLASSES",
    "THING_TRAIN_IDS",
    "THING_COLORS",
    "THING_CLASS_ALIASES",
    "canonical_class_name",
]

# Label value ignored by losses and evaluation.
IGNORE_LABEL = 255

# (name, RGB colour) in train-id order 0..18, as in cityscapesscripts' labels.py.
_CITYSCAPES_19 = [
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
]
CITYSCAPES_19_CLASSES = [name for name, _ in _CITYSCAPES_19]
CITYSCAPES_19_COLORS = [color for _, color in _CITYSCAPES_19]

# The 8 detection classes: the Cityscapes "thing" classes, in train-id order.
THING_CLASSES = CITYSCAPES_19_CLASSES[11:]
# Train id of each detection class (index i of THING_CLASSES has train id THING_TRAIN_IDS[i]).
THING_TRAIN_IDS = list(range(11, 19))
THING_COLORS = CITYSCAPES_19_COLORS[11:]

# Other spellings of the thing classes accepted in users' COCO files (Sim10k, UrbanSyn, ...).
THING_CLASS_ALIASES = {"pedestrian": "person", "motorbike": "motorcycle", "bike": "bicycle"}


def canonical_class_name(name: str) -> str:
    """A category name as VLT compares it: lower case, stripped, aliases resolved."""
    name = name.strip().lower()
    return THING_CLASS_ALIASES.get(name, name)
