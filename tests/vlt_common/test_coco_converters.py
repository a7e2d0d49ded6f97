"""COCO converters: boxes, masks, categories, crowd flags and skipped classes, end to end."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

from tests.tool_loader import load_tool
from vlt_common.data.conversion import write_json, write_png
from vlt_common.data.datasets import datasets_root, register_dg_coco
from vlt_common.data.datasets.builtin_meta import THING_CLASSES
from vlt_common.data.datasets.coco_converters import (
    convert_acdc,
    convert_bdd100k,
    convert_cityscapes,
)

# COCO category ids (1-based) of some thing classes.
CAR, PERSON, RIDER, TRUCK = (
    THING_CLASSES.index(n) + 1 for n in ("car", "person", "rider", "truck")
)


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _cityscapes_tree(root, objects, split="val"):
    stem = "c/c_000000_000001"
    image = root / f"leftImg8bit/{split}/{stem}_leftImg8bit.png"
    write_png(str(image), np.zeros((20, 30, 3), np.uint8))
    path = root / f"gtFine/{split}/{stem}_gtFine_polygons.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imgHeight": 20, "imgWidth": 30, "objects": objects}))
    return path


# Drawn in this order: later objects cover earlier ones, as in Cityscapes.
CS_OBJECTS = [
    {"label": "road", "polygon": _rect(0, 0, 29, 19)},
    {"label": "car", "polygon": _rect(2, 2, 11, 9)},
    {"label": "person", "polygon": _rect(7, 0, 14, 12)},  # hides the car's right part
    {"label": "license plate", "polygon": _rect(3, 3, 4, 4)},  # not drawn: stays car
    {"label": "cargroup", "polygon": _rect(20, 10, 25, 15)},
    {"label": "caravan", "polygon": _rect(20, 0, 24, 4)},
    {"label": "bus", "polygon": _rect(0, 15, 5, 19), "deleted": 1},
    {"label": "rider", "polygon": _rect(27, 17, 28, 18)},
]


def test_cityscapes_visible_boxes_masks_and_crowds(tmp_path):
    _cityscapes_tree(tmp_path, CS_OBJECTS)
    coco = convert_cityscapes(str(tmp_path), "val")
    assert coco["categories"] == [
        {"id": i + 1, "name": n, "supercategory": "human" if i < 2 else "vehicle"}
        for i, n in enumerate(THING_CLASSES)
    ]
    assert coco["images"] == [
        {"id": 1, "file_name": "c/c_000000_000001_leftImg8bit.png", "height": 20, "width": 30}
    ]
    anns = sorted(
        ((a["category_id"], a["iscrowd"], a["bbox"], a["area"]) for a in coco["annotations"])
    )
    assert anns == [
        (PERSON, 0, [7.0, 0.0, 8.0, 13.0], 104.0),
        (RIDER, 0, [27.0, 17.0, 2.0, 2.0], 4.0),
        (CAR, 0, [2.0, 2.0, 5.0, 8.0], 40.0),  # only the visible part, plate included
        (CAR, 1, [20.0, 10.0, 6.0, 6.0], 36.0),  # "cargroup" -> crowd
    ]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    car = next(a for a in coco["annotations"] if a["category_id"] == CAR and not a["iscrowd"])
    assert isinstance(car["segmentation"]["counts"], str)
    assert car["segmentation"]["size"] == [20, 30]


def test_cityscapes_errors(tmp_path):
    path = _cityscapes_tree(tmp_path, [{"label": "spaceship", "polygon": _rect(0, 0, 3, 3)}])
    with pytest.raises(ValueError, match=r"c_000000_000001_gtFine_polygons\.json.*spaceship"):
        convert_cityscapes(str(tmp_path), "val")
    os.remove(tmp_path / "leftImg8bit/val/c/c_000000_000001_leftImg8bit.png")
    path.write_text(json.dumps({"imgHeight": 20, "imgWidth": 30, "objects": []}))
    with pytest.raises(FileNotFoundError, match=r"image .*c_000000_000001_leftImg8bit\.png"):
        convert_cityscapes(str(tmp_path), "val")
    with pytest.raises(FileNotFoundError, match=r"gtFine/train"):
        convert_cityscapes(str(tmp_path), "train")


def _bdd_tree(root):
    images = root / "images/100k/val"
    images.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(images / name)
    frames = [
        {"name": "a.jpg", "labels": [
            {"id": "1", "category": "pedestrian", "box2d": {"x1": 10, "y1": 5, "x2": 19, "y2": 14}},
            {"id": "2", "category": "car", "attributes": {"crowd": True},
             "box2d": {"x1": 0.5, "y1": 1.0, "x2": 3.5, "y2": 2.0}},
            {"id": "3", "category": "other person", "box2d": {"x1": 1, "y1": 1, "x2": 2, "y2": 2}},
            {"id": "4", "category": "trailer", "box2d": {"x1": 5, "y1": 5, "x2": 9, "y2": 9}},
            {"id": "5", "category": "traffic light", "box2d": {"x1": 1, "y1": 1, "x2": 2, "y2": 2}},
        ]},
        {"name": "b.jpg", "labels": None},
    ]
    labels = root / "labels/det_20/det_val.json"
    labels.parent.mkdir(parents=True)
    labels.write_text(json.dumps(frames))
    return labels, images


def test_bdd100k_boxes_crowds_and_skips(tmp_path):
    labels, images = _bdd_tree(tmp_path)
    coco = convert_bdd100k(str(labels), str(images))
    assert [(i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
        ("a.jpg", 24, 40), ("b.jpg", 24, 40)
    ]
    anns = [(a["image_id"], a["category_id"], a["iscrowd"], a["bbox"], a["area"])
            for a in coco["annotations"]]
    assert anns == [
        (1, PERSON, 0, [10.0, 5.0, 10.0, 10.0], 100.0),  # inclusive corners: x2 - x1 + 1
        (1, CAR, 1, [0.5, 1.0, 4.0, 2.0], 8.0),
        (1, PERSON, 1, [1.0, 1.0, 2.0, 2.0], 4.0),  # "other person": ignore region
        (1, TRUCK, 1, [5.0, 5.0, 5.0, 5.0], 25.0),  # "trailer": ignore region of truck
    ]
    os.remove(images / "b.jpg")
    with pytest.raises(FileNotFoundError, match=r"b\.jpg"):
        convert_bdd100k(str(labels), str(images))
    labels.write_text(json.dumps({"frames": []}))
    with pytest.raises(ValueError, match=r"det_val\.json: expected a list of frames"):
        convert_bdd100k(str(labels), str(images))


def _panoptic_png(path, segments):
    """segments: list of (segment id, (y0, y1, x0, x1)) painted in order on a 16x24 canvas."""
    ids = np.zeros((16, 24), np.int64)
    for segment_id, (y0, y1, x0, x1) in segments:
        ids[y0:y1, x0:x1] = segment_id
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    write_png(str(path), rgb)


def _acdc_tree(root):
    categories = [
        {"id": 7, "name": "road", "isthing": 0}, {"id": 24, "name": "person", "isthing": 1},
        {"id": 26, "name": "car", "isthing": 1}, {"id": 29, "name": "caravan", "isthing": 1},
    ]
    images, annotations = [], []
    for image_id, cond in enumerate(("fog", "night"), start=1):
        stem = f"GOPR{image_id}/GOPR{image_id}_frame_00000{image_id}"
        image = root / f"rgb_anon/{cond}/val/{stem}_rgb_anon.png"
        write_png(str(image), np.zeros((16, 24, 3), np.uint8))
        _panoptic_png(root / f"gt_panoptic/{cond}/val/{stem}_gt_panoptic.png",
                      [(7000, (0, 16, 0, 24)), (26000, (2, 6, 3, 9)), (24001, (8, 12, 10, 12)),
                       (29002, (0, 2, 0, 2))])
        images.append({"id": image_id, "file_name": f"{cond}/val/{stem}_rgb_anon.png",
                       "height": 16, "width": 24})
        annotations.append({"image_id": image_id, "file_name": f"{stem}_gt_panoptic.png",
                            "segments_info": [
                                {"id": 7000, "category_id": 7, "iscrowd": 0},
                                {"id": 26000, "category_id": 26, "iscrowd": 0},
                                {"id": 24001, "category_id": 24, "iscrowd": 1},
                                {"id": 29002, "category_id": 29, "iscrowd": 0}]})
    path = root / "gt_panoptic/val_panoptic.json"
    path.write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_acdc_panoptic_per_condition_and_all(tmp_path):
    panoptic = _acdc_tree(tmp_path)
    outputs = convert_acdc(str(tmp_path), [str(panoptic)], str(tmp_path / "gt_panoptic"))
    assert sorted(outputs) == ["fog_val", "night_val", "val"]
    assert [i["file_name"] for i in outputs["val"]["images"]] == [
        "fog/val/GOPR1/GOPR1_frame_000001_rgb_anon.png",
        "night/val/GOPR2/GOPR2_frame_000002_rgb_anon.png",
    ]
    fog = outputs["fog_val"]
    assert len(fog["images"]) == 1
    assert [(a["category_id"], a["iscrowd"], a["bbox"], a["area"]) for a in fog["annotations"]] == [
        (CAR, 0, [3.0, 2.0, 6.0, 4.0], 24.0),
        (PERSON, 1, [10.0, 8.0, 2.0, 4.0], 8.0),
    ]
    assert len(outputs["val"]["annotations"]) == 4


def test_acdc_errors(tmp_path):
    panoptic = _acdc_tree(tmp_path)
    content = json.loads(panoptic.read_text())
    content["annotations"][0]["segments_info"].append({"id": 999, "category_id": 26})
    panoptic.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"GOPR1_frame_000001_gt_panoptic\.png: segment 999"):
        convert_acdc(str(tmp_path), [str(panoptic)], str(tmp_path / "gt_panoptic"))
    content["images"][1]["file_name"] = "night/val/missing_rgb_anon.png"
    panoptic.write_text(json.dumps(content))
    with pytest.raises(FileNotFoundError, match=r"no image missing_rgb_anon\.png"):
        convert_acdc(str(tmp_path), [str(panoptic)], str(tmp_path / "gt_panoptic"))


def test_tool_writes_where_registration_reads_and_detectron2_loads_it(tmp_path, capsys):
    tool = load_tool("convert_to_coco")
    root = tmp_path / "cityscapes"
    _cityscapes_tree(root, CS_OBJECTS)
    argv = ["cityscapes", "--root", str(root), "--splits", "val", "--workers", "1"]
    assert tool.main(argv) == 0
    output = root / "coco/instances_val.json"
    assert "wrote" in capsys.readouterr().out and output.is_file()
    registered = MetadataCatalog.get("cityscapes_det_val")
    relative = str(output.relative_to(tmp_path))
    assert os.path.relpath(registered.json_file, datasets_root()) == relative
    assert os.path.relpath(registered.image_root, datasets_root()) == "cityscapes/leftImg8bit/val"
    mtime = output.stat().st_mtime_ns
    assert tool.main(argv) == 0 and output.stat().st_mtime_ns == mtime
    assert "kept existing" in capsys.readouterr().out
    assert [p.name for p in output.parent.iterdir()] == ["instances_val.json"]  # no temp files

    api = COCO(str(output))
    (car,) = api.loadAnns(api.getAnnIds(catIds=[CAR], iscrowd=False))
    assert api.annToMask(car).sum() == car["area"]
    register_dg_coco("test_cs_det_val", str(output), str(root / "leftImg8bit/val"))
    try:
        (record,) = DatasetCatalog.get("test_cs_det_val")
        image = root / "leftImg8bit/val/c/c_000000_000001_leftImg8bit.png"
        assert record["file_name"] == str(image)
        boxes = sorted((a["category_id"], a["bbox"]) for a in record["annotations"])
        assert boxes[0] == (THING_CLASSES.index("person"), [7.0, 0.0, 8.0, 13.0])
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in record["annotations"])
    finally:
        DatasetCatalog.remove("test_cs_det_val")
        MetadataCatalog.remove("test_cs_det_val")


def test_tool_acdc_and_bdd_outputs(tmp_path, capsys):
    tool = load_tool("convert_to_coco")
    acdc = tmp_path / "acdc"
    panoptic = _acdc_tree(acdc)
    assert tool.main(["acdc", "--root", str(acdc), "--workers", "2",
                      "--panoptic-json", str(panoptic)]) == 0
    assert sorted(p.name for p in (acdc / "coco").iterdir()) == [
        "instances_fog_val.json", "instances_night_val.json", "instances_val.json"
    ]
    assert tool.main(["acdc", "--root", str(acdc)]) == 1
    assert "--panoptic-json" in capsys.readouterr().err
    bdd = tmp_path / "bdd100k"
    _bdd_tree(bdd)
    assert tool.main(["bdd100k", "--root", str(bdd), "--splits", "val", "--workers", "1"]) == 0
    written = json.loads((bdd / "coco/instances_val.json").read_text())
    assert len(written["images"]) == 2 and len(written["annotations"]) == 4
    write_json(str(bdd / "coco/instances_val.json"), {"stale": True})
    assert tool.main(["bdd100k", "--root", str(bdd), "--splits", "val", "--overwrite",
                      "--workers", "1"]) == 0
    assert "images" in json.loads((bdd / "coco/instances_val.json").read_text())
