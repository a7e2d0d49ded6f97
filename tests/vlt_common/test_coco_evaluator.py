"""Detection AP of users' COCO files (other id order, extra categories, a subset of the classes)
against pycocotools run directly on the same file."""
import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlt_common.data.datasets import register_dg_coco
from vlt_common.evaluation import DGCOCOEvaluator
from vlt_common.label_spaces import THING_CLASSES

NUM_IMAGES, SIZE = 6, 64


def _write_gt(path, categories, seed=0):
    """A COCO file with random boxes of every category on NUM_IMAGES images."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.png", "height": SIZE, "width": SIZE}
              for i in range(NUM_IMAGES)]
    anns = []
    for img in images:
        for cat in categories:
            for _ in range(rng.integers(1, 3)):
                x, y = rng.uniform(0, SIZE / 2, 2)
                w, h = rng.uniform(8, SIZE / 2, 2)
                anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat["id"],
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return anns


def _predictions(anns, categories, seed=1):
    """Per image, jittered copies of the ground-truth boxes (some with a wrong class) plus random
    false positives of every model class, as model outputs (class = index in THING_CLASSES)."""
    rng = np.random.default_rng(seed)
    name_of = {c["id"]: c["name"] for c in categories}
    per_image = {}
    for a in anns:
        name = {"pedestrian": "person"}.get(name_of[a["category_id"]], name_of[a["category_id"]])
        if name not in THING_CLASSES:
            continue
        x, y, w, h = np.array(a["bbox"]) + rng.normal(0, 2, 4)
        cls = THING_CLASSES.index(name) if rng.uniform() > 0.2 else int(rng.integers(0, 8))
        per_image.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], rng.uniform(), cls))
    for image_id in range(1, NUM_IMAGES + 1):
        for cls in range(len(THING_CLASSES)):
            x, y = rng.uniform(0, SIZE / 2, 2)
            box = [x, y, x + rng.uniform(8, 30), y + rng.uniform(8, 30)]
            per_image.setdefault(image_id, []).append((box, rng.uniform() * 0.5, cls))
    return per_image


def _process(evaluator, per_image):
    evaluator.reset()
    for image_id, dets in per_image.items():
        inst = Instances((SIZE, SIZE))
        inst.pred_boxes = Boxes(torch.tensor([d[0] for d in dets], dtype=torch.float32))
        inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[2] for d in dets])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])


def _pycocotools_ap(json_file, per_image, categories):
    """Headline and per-category AP by pycocotools alone, on the model classes the file has."""
    cat_of = {}
    for c in categories:
        name = {"pedestrian": "person"}.get(c["name"], c["name"])
        if name in THING_CLASSES:
            cat_of[THING_CLASSES.index(name)] = c["id"]
    dets = [
        {"image_id": i, "category_id": cat_of[cls], "score": float(s),
         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for i, ds in per_image.items() for b, s, cls in ds if cls in cat_of
    ]

    def run(cat_ids):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(json_file)
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.params.catIds = cat_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return 100 * ev.stats

    stats = run(sorted(cat_of.values()))
    per_class = {THING_CLASSES[i]: run([c])[0] for i, c in cat_of.items()}
    return stats, per_class


CASES = {
    # The 8 classes, ids in another order (reversed, starting at 1), one spelled "pedestrian".
    "other_order": [{"id": 8 - i, "name": "pedestrian" if n == "person" else n}
                    for i, n in enumerate(THING_CLASSES)],
    # Extra categories the model does not have (dropped, as the README says).
    "extra": [{"id": 1, "name": "traffic light"}]
    + [{"id": i + 2, "name": n} for i, n in enumerate(THING_CLASSES)]
    + [{"id": 20, "name": "traffic sign"}],
    # One class only.
    "car_only": [{"id": 1, "name": "car"}],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ap_matches_pycocotools(case, tmp_path, caplog):
    categories = CASES[case]
    json_file = str(tmp_path / f"{case}.json")
    anns = _write_gt(json_file, categories)
    name = f"dgtest_coco_{case}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_dg_coco(name, json_file, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        evaluator = DGCOCOEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
    per_image = _predictions(anns, categories)
    _process(evaluator, per_image)
    res = evaluator.evaluate()["bbox"]
    stats, per_class = _pycocotools_ap(json_file, per_image, categories)
    for k, metric in enumerate(("AP", "AP50", "AP75")):
        assert res[metric] == pytest.approx(stats[k], abs=1e-9), metric
    assert {k[3:] for k in res if k.startswith("AP-")} == set(per_class)
    for cls, ap in per_class.items():
        assert res[f"AP-{cls}"] == pytest.approx(ap, abs=1e-9), cls
    # Per-class values differ between classes, so a name mix-up cannot go unnoticed.
    assert len(per_class) == 1 or len({round(v, 6) for v in per_class.values()}) > 1
    warnings = [r.getMessage() for r in caplog.records if "not evaluated" in r.getMessage()]
    if case == "other_order":
        assert not warnings
    else:
        assert len(warnings) == 1
        dropped = "traffic light" if case == "extra" else "person"
        assert dropped in warnings[0]


def test_file_without_shared_class_is_an_error(tmp_path):
    json_file = str(tmp_path / "signs.json")
    _write_gt(json_file, [{"id": 1, "name": "traffic sign"}])
    name = "dgtest_coco_signs"
    if name not in DatasetCatalog.list():
        register_dg_coco(name, json_file, str(tmp_path))
    with pytest.raises(ValueError, match=r"signs.json: none of its categories \['traffic sign'\]"):
        DGCOCOEvaluator(name, distributed=False)
