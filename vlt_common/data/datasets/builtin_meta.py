"""The label spaces VLT evaluates in and the maps into them.

The class tables themselves live in :mod:`vlt_common.label_spaces` (re-exported here).
Semantic segmentation uses the 19 Cityscapes evaluation classes (train ids 0..18, ignore 255);
every source and target dataset is mapped into them. Detection uses the 8 "thing" classes that the
segmentation datasets share. The maps from each source dataset's own ids or category names into
these spaces live here too, so that registration, preparation tools and converters share them.
"""
from cityscapesscripts.helpers.labels import labels as _cityscapes_labels

from vlt_common.label_spaces import (
    CITYSCAPES_19_CLASSES,
    CITYSCAPES_19_COLORS,
    IGNORE_LABEL,
    THING_CLASS_ALIASES,
    THING_CLASSES,
    THING_COLORS,
    THING_TRAIN_IDS,
)

__all__ = [
    "CITYSCAPES_19_CLASSES",
    "CITYSCAPES_19_COLORS",
    "IGNORE_LABEL",
    "THING_CLASSES",
    "THING_TRAIN_IDS",
    "THING_COLORS",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "GTA5_ID_TO_TRAIN_ID",
    "SYNTHIA_CLASSES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "MAPILLARY_V12_CLASSES",
    "MAPILLARY_ID_TO_TRAIN_ID",
    "CITYSCAPES_ID_TO_THING",
    "BDD100K_DET_TO_THING",
    "BDD100K_DET_IGNORED_AS",
    "THING_CLASS_ALIASES",
]

# ---------------------------------------------------------------------------------------------
# Source label spaces -> the 19 classes (semantic segmentation)
# ---------------------------------------------------------------------------------------------


def _to_train_ids(table):
    """Map ``[(source id, Cityscapes class name or None), ...]`` to ``{source id: train id}``."""
    return {
        source_id: CITYSCAPES_19_CLASSES.index(name) if name is not None else IGNORE_LABEL
        for source_id, name in table
    }


# Cityscapes label id (the values of ``*_gtFine_labelIds.png``) -> train id, read from
# cityscapesscripts' own labels table: its train ids 0..18 are our classes, everything else
# (void, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer) is ignored.
# The license plate (id -1) has no pixels of its own and is left out.
CITYSCAPES_ID_TO_TRAIN_ID = {
    label.id: label.trainId if 0 <= label.trainId < len(CITYSCAPES_19_CLASSES) else IGNORE_LABEL
    for label in _cityscapes_labels
    if label.id >= 0
}

# GTA5 ("Playing for Data", Richter et al. 2016) label PNGs store Cityscapes label ids.
GTA5_ID_TO_TRAIN_ID = CITYSCAPES_ID_TO_TRAIN_ID

# SYNTHIA-RAND-CITYSCAPES class ids 0..22 (the order of the dataset's README), each with the
# Cityscapes class it is trained and evaluated as; None is ignored. Lane markings, parking slots
# and road works are ignored, as in the DG literature (DAFormer, Rein).
SYNTHIA_CLASSES = [
    ("void", None),
    ("sky", "sky"),
    ("building", "building"),
    ("road", "road"),
    ("sidewalk", "sidewalk"),
    ("fence", "fence"),
    ("vegetation", "vegetation"),
    ("pole", "pole"),
    ("car", "car"),
    ("traffic sign", "traffic sign"),
    ("pedestrian", "person"),
    ("bicycle", "bicycle"),
    ("motorcycle", "motorcycle"),
    ("parking-slot", None),
    ("road-work", None),
    ("traffic light", "traffic light"),
    ("terrain", "terrain"),
    ("rider", "rider"),
    ("truck", "truck"),
    ("bus", "bus"),
    ("train", "train"),
    ("wall", "wall"),
    ("lanemarking", None),
]
SYNTHIA_ID_TO_TRAIN_ID = _to_train_ids(enumerate(cs for _, cs in SYNTHIA_CLASSES))

# Mapillary Vistas v1.2: its 66 classes in id order (config.json), each with the Cityscapes class
# it is evaluated as (None: ignored). This is the protocol of the DG papers we compare with
# (openseg.pytorch's Mapillary-to-Cityscapes conversion, used by Rein and VLTSeg): road markings,
# bike/service lanes, plain crosswalks and parking count as road; curbs, curb cuts and pedestrian
# areas as sidewalk; street lights and utility poles as pole; every traffic-sign part (front,
# back, frame) as traffic sign; all riders as rider; "on rails" as train.
MAPILLARY_V12_CLASSES = [
    ("animal--bird", None),
    ("animal--ground-animal", None),
    ("construction--barrier--curb", "sidewalk"),
    ("construction--barrier--fence", "fence"),
    ("construction--barrier--guard-rail", None),
    ("construction--barrier--other-barrier", None),
    ("construction--barrier--wall", "wall"),
    ("construction--flat--bike-lane", "road"),
    ("construction--flat--crosswalk-plain", "road"),
    ("construction--flat--curb-cut", "sidewalk"),
    ("construction--flat--parking", "road"),
    ("construction--flat--pedestrian-area", "sidewalk"),
    ("construction--flat--rail-track", None),
    ("construction--flat--road", "road"),
    ("construction--flat--service-lane", "road"),
    ("construction--flat--sidewalk", "sidewalk"),
    ("construction--structure--bridge", None),
    ("construction--structure--building", "building"),
    ("construction--structure--tunnel", None),
    ("human--person", "person"),
    ("human--rider--bicyclist", "rider"),
    ("human--rider--motorcyclist", "rider"),
    ("human--rider--other-rider", "rider"),
    ("marking--crosswalk-zebra", "road"),
    ("marking--general", "road"),
    ("nature--mountain", None),
    ("nature--sand", None),
    ("nature--sky", "sky"),
    ("nature--snow", None),
    ("nature--terrain", "terrain"),
    ("nature--vegetation", "vegetation"),
    ("nature--water", None),
    ("object--banner", None),
    ("object--bench", None),
    ("object--bike-rack", None),
    ("object--billboard", None),
    ("object--catch-basin", None),
    ("object--cctv-camera", None),
    ("object--fire-hydrant", None),
    ("object--junction-box", None),
    ("object--mailbox", None),
    ("object--manhole", None),
    ("object--phone-booth", None),
    ("object--pothole", None),
    ("object--street-light", "pole"),
    ("object--support--pole", "pole"),
    ("object--support--traffic-sign-frame", "traffic sign"),
    ("object--support--utility-pole", "pole"),
    ("object--traffic-light", "traffic light"),
    ("object--traffic-sign--back", "traffic sign"),
    ("object--traffic-sign--front", "traffic sign"),
    ("object--trash-can", None),
    ("object--vehicle--bicycle", "bicycle"),
    ("object--vehicle--boat", None),
    ("object--vehicle--bus", "bus"),
    ("object--vehicle--car", "car"),
    ("object--vehicle--caravan", None),
    ("object--vehicle--motorcycle", "motorcycle"),
    ("object--vehicle--on-rails", "train"),
    ("object--vehicle--other-vehicle", None),
    ("object--vehicle--trailer", None),
    ("object--vehicle--truck", "truck"),
    ("object--vehicle--wheeled-slow", None),
    ("void--car-mount", None),
    ("void--ego-vehicle", None),
    ("void--unlabeled", None),
]
MAPILLARY_ID_TO_TRAIN_ID = _to_train_ids(enumerate(cs for _, cs in MAPILLARY_V12_CLASSES))

# ---------------------------------------------------------------------------------------------
# Source categories -> the 8 thing classes (detection)
# ---------------------------------------------------------------------------------------------

# Cityscapes label id -> index into THING_CLASSES. ACDC's panoptic categories use these ids too.
CITYSCAPES_ID_TO_THING = {
    label.id: THING_TRAIN_IDS.index(label.trainId)
    for label in _cityscapes_labels
    if label.id >= 0 and label.trainId in THING_TRAIN_IDS
}

# BDD100K detection ("det_20") categories -> thing class. Traffic lights and signs are not things.
BDD100K_DET_TO_THING = {
    "pedestrian": "person",
    "rider": "rider",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "train": "train",
    "motorcycle": "motorcycle",
    "bicycle": "bicycle",
}
# BDD100K categories that its own detection config evaluates as ignore regions of a class: they
# become crowd boxes (iscrowd=1) of that class, so detections on them are neither right nor wrong.
BDD100K_DET_IGNORED_AS = {"other person": "person", "other vehicle": "car", "trailer": "truck"}
