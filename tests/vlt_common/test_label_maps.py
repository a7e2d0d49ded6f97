"""The label maps of every source dataset into the 19 classes and the 8 thing classes."""
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from cityscapesscripts.helpers.labels import name2label

from vlt_common.data.datasets import builtin_meta as meta
from vlt_common.data.prepare.conversion import IdMapper


def _train_id(name):
    return meta.CITYSCAPES_19_CLASSES.index(name)


def test_19_classes_match_cityscapesscripts():
    for label in cityscapes_labels:
        if 0 <= label.trainId < 19:
            assert meta.CITYSCAPES_19_CLASSES[label.trainId] == label.name
            assert tuple(meta.CITYSCAPES_19_COLORS[label.trainId]) == label.color
    assert meta.THING_CLASSES == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    ]


def test_gta5_and_cityscapes_ids():
    table = meta.GTA5_ID_TO_TRAIN_ID
    assert table is meta.CITYSCAPES_ID_TO_TRAIN_ID
    assert sorted(table) == list(range(34))
    # Void and evaluation-ignored classes -> 255.
    for name in ("unlabeled", "ego vehicle", "ground", "parking", "rail track", "guard rail",
                 "bridge", "tunnel", "polegroup", "caravan", "trailer"):
        assert table[name2label[name].id] == 255, name
    assert table[7] == _train_id("road") and table[26] == _train_id("car")
    assert table[33] == _train_id("bicycle") and table[31] == _train_id("train")
    assert sorted(v for v in table.values() if v != 255) == list(range(19))


def test_synthia_ids():
    table = meta.SYNTHIA_ID_TO_TRAIN_ID
    assert sorted(table) == list(range(23))
    expected = {
        0: 255, 1: _train_id("sky"), 2: _train_id("building"), 3: _train_id("road"),
        4: _train_id("sidewalk"), 8: _train_id("car"), 10: _train_id("person"),
        11: _train_id("bicycle"), 12: _train_id("motorcycle"), 13: 255, 14: 255,
        15: _train_id("traffic light"), 17: _train_id("rider"), 21: _train_id("wall"), 22: 255,
    }
    assert {k: table[k] for k in expected} == expected
    assert sorted(v for v in table.values() if v != 255) == list(range(19))


def test_mapillary_66_to_19():
    table = meta.MAPILLARY_ID_TO_TRAIN_ID
    assert len(meta.MAPILLARY_V12_CLASSES) == 66 and sorted(table) == list(range(66))
    names = [name for name, _ in meta.MAPILLARY_V12_CLASSES]
    assert names[13] == "construction--flat--road" and names[65] == "void--unlabeled"
    by_name = {name: table[i] for i, name in enumerate(names)}
    for name in ("construction--flat--road", "construction--flat--bike-lane",
                 "construction--flat--service-lane", "marking--general",
                 "marking--crosswalk-zebra", "construction--flat--crosswalk-plain"):
        assert by_name[name] == _train_id("road"), name
    for name in ("construction--barrier--curb", "construction--flat--pedestrian-area"):
        assert by_name[name] == _train_id("sidewalk"), name
    for name in ("human--rider--bicyclist", "human--rider--motorcyclist",
                 "human--rider--other-rider"):
        assert by_name[name] == _train_id("rider"), name
    assert by_name["object--vehicle--on-rails"] == _train_id("train")
    assert by_name["object--traffic-sign--front"] == _train_id("traffic sign")
    assert by_name["object--street-light"] == _train_id("pole")
    for name in ("void--unlabeled", "void--ego-vehicle", "object--vehicle--caravan",
                 "nature--water", "animal--bird", "object--vehicle--other-vehicle"):
        assert by_name[name] == 255, name
    # Every one of the 19 classes is reachable from Mapillary.
    assert sorted(set(table.values()) - {255}) == list(range(19))


def test_thing_maps():
    assert meta.CITYSCAPES_ID_TO_THING == {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
    targets = set(meta.BDD100K_DET_TO_THING.values()) | set(meta.BDD100K_DET_IGNORED_AS.values())
    assert targets <= set(meta.THING_CLASSES)
    assert set(meta.BDD100K_DET_TO_THING.values()) == set(meta.THING_CLASSES)


def test_id_mapper_maps_voids_and_counts_unknown_ids():
    mapper = IdMapper(meta.GTA5_ID_TO_TRAIN_ID)
    ids = np.array([[7, 26, 0, 34], [255, 33, 9, 1000]], dtype=np.int64)
    out, unknown = mapper(ids)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 13, 255, 255], [255, 18, 255, 255]])
    assert unknown == 3  # 34, 255 and 1000 are not GTA5 ids; 0 and 9 are void / ignored


def test_id_mapper_rejects_bad_tables():
    with pytest.raises(ValueError, match="non-negative"):
        IdMapper({-1: 0})
    with pytest.raises(ValueError, match="0..255"):
        IdMapper({0: 300})
