"""DGSemSegEvaluator and build_evaluator: metrics against hand-computed confusion matrices,
out-of-range labels, bad predictions, overlays, the DDP reduction, and evaluator selection."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from vlt_common.config import add_vlt_common_config
from vlt_common.evaluation import (
    DGCOCOEvaluator,
    DGSemSegEvaluator,
    build_evaluator,
    confusion_matrix,
    reduce_confusion_matrices,
    sem_seg_metrics,
    sem_seg_panels,
)

CLASSES = ["a", "b", "c", "d"]
COLORS = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]

# Image 1 (4x6): 4 ignored pixels.
GT1 = np.array(
    [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 2, 255, 255, 1, 1], [2, 2, 255, 255, 1, 1]]
)
PRED1 = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 0, 2, 2, 1, 0], [2, 2, 0, 1, 1, 0]])
# Image 2 (2x2): label 7 is outside the 4 classes and must be ignored (with a warning); class
# "d" is predicted but never in the ground truth.
GT2 = np.array([[0, 0], [255, 7]])
PRED2 = np.array([[0, 3], [3, 3]])
# Counted by hand: rows ground truth, columns prediction.
EXPECTED_CONF = np.array([[6, 1, 0, 1], [2, 8, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])


def _register_meta(name):
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(
            stuff_classes=CLASSES,
            stuff_colors=COLORS,
            ignore_label=255,
            evaluator_type="dg_sem_seg",
        )
    return name


def _write_pair(folder, stem, gt, seed):
    label = os.path.join(folder, f"{stem}_label.png")
    image = os.path.join(folder, f"{stem}.png")
    Image.fromarray(gt.astype(np.uint8)).save(label)
    rgb = np.random.default_rng(seed).integers(0, 256, gt.shape + (3,), dtype=np.uint8)
    Image.fromarray(rgb).save(image)
    return {"file_name": image, "sem_seg_file_name": label}


def _scores(pred):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), len(CLASSES)).permute(2, 0, 1).float()


@pytest.fixture
def pairs(tmp_path):
    return [_write_pair(str(tmp_path), "img1", GT1, 0), _write_pair(str(tmp_path), "img2", GT2, 1)]


def test_confusion_matrix_by_hand():
    np.testing.assert_array_equal(
        confusion_matrix(GT1, PRED1, 4), [[5, 1, 0, 0], [2, 8, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    )


def test_metrics_against_hand_computed_values(pairs, caplog):
    evaluator = DGSemSegEvaluator(_register_meta("dgtest_sem"), distributed=False)
    evaluator.reset()
    with caplog.at_level(logging.WARNING):
        for inp, pred in zip(pairs, (PRED1, PRED2)):
            evaluator.process([inp], [{"sem_seg": _scores(pred)}])
    # The out-of-range pixel is reported, naming the file and the count, then ignored.
    assert any(pairs[1]["sem_seg_file_name"] in r.getMessage() and "1 pixels" in r.getMessage()
               for r in caplog.records)
    np.testing.assert_array_equal(evaluator._conf, EXPECTED_CONF)
    res = evaluator.evaluate()["sem_seg"]
    iou = [6 / 11, 8 / 11, 3 / 4]
    assert res["IoU-a"] == pytest.approx(100 * 6 / 11)
    assert res["IoU-b"] == pytest.approx(100 * 8 / 11)
    assert res["IoU-c"] == pytest.approx(75.0)
    # No ground-truth pixel of "d": NaN and out of the mean, though it was predicted.
    assert np.isnan(res["IoU-d"]) and np.isnan(res["ACC-d"])
    assert res["mIoU"] == pytest.approx(100 * np.mean(iou))
    assert res["pACC"] == pytest.approx(100 * 17 / 22)
    assert res["mACC"] == pytest.approx(100 * np.mean([6 / 8, 8 / 10, 3 / 4]))
    assert res["fwIoU"] == pytest.approx(100 * (8 * 6 / 11 + 10 * 8 / 11 + 4 * 3 / 4) / 22)


def test_bad_predictions_name_the_file(pairs):
    evaluator = DGSemSegEvaluator(_register_meta("dgtest_sem"), distributed=False)
    # A prediction of the wrong size: the image is named with the prediction's size, the label
    # map with its own (the image itself is 4x6, like its label map).
    match = r"prediction for image \S*img1.png has size \(h, w\)=\(3, 6\) but its label map " \
        r"\S*img1_label.png has \(h, w\)=\(4, 6\)"
    with pytest.raises(ValueError, match=match):
        evaluator.process([pairs[0]], [{"sem_seg": _scores(PRED1[:3])}])
    with pytest.raises(ValueError, match=r"img1.png has shape \(3, 4, 6\)"):
        evaluator.process([pairs[0]], [{"sem_seg": _scores(PRED1)[:3]}])


def test_missing_metadata_is_an_error():
    MetadataCatalog.get("dgtest_no_stuff").set(evaluator_type="dg_sem_seg")
    with pytest.raises(ValueError, match="'dgtest_no_stuff' has no \\['stuff_classes'"):
        DGSemSegEvaluator("dgtest_no_stuff")


def test_overlays_and_json_are_written(pairs, tmp_path):
    out = str(tmp_path / "eval")
    evaluator = DGSemSegEvaluator(
        _register_meta("dgtest_sem"), output_dir=out, num_vis=1, distributed=False
    )
    for inp, pred in zip(pairs, (PRED1, PRED2)):
        evaluator.process([inp], [{"sem_seg": _scores(pred)}])
    evaluator.evaluate()
    assert os.listdir(os.path.join(out, "overlays")) == ["img1.png"]
    panels = np.asarray(Image.open(os.path.join(out, "overlays", "img1.png")))
    image = np.asarray(Image.open(pairs[0]["file_name"]))
    assert panels.shape == (4, 18, 3)
    np.testing.assert_array_equal(panels[:, :6], image)
    expected = (0.4 * image[0, 2] + 0.6 * np.array(COLORS[PRED1[0, 2]]) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(panels[0, 6 + 2], expected)
    np.testing.assert_array_equal(panels[2, 12 + 2], image[2, 2])  # ignored: plain image
    with open(os.path.join(out, "sem_seg_evaluation.json")) as f:
        saved = json.load(f)
    assert saved["metrics"]["IoU-d"] is None
    assert np.sum(saved["confusion_matrix (rows: ground truth, columns: prediction)"]) == 22


def test_panels_check_sizes():
    with pytest.raises(ValueError, match="same size"):
        sem_seg_panels(np.zeros((4, 6, 3), np.uint8), PRED1, GT2, COLORS)


def test_reduce_confusion_matrices():
    a, b = np.arange(16).reshape(4, 4), np.ones((4, 4), np.int64)
    np.testing.assert_array_equal(reduce_confusion_matrices([a, b]), a + b)
    with pytest.raises(ValueError, match="different shapes"):
        reduce_confusion_matrices([a, np.ones((3, 3))])


def _cfg(tmp_path):
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.DG.NUM_VIS = 2
    return cfg


def test_build_evaluator_by_evaluator_type(tmp_path):
    cfg = _cfg(tmp_path)
    sem = build_evaluator(cfg, _register_meta("dgtest_sem"))
    assert isinstance(sem, DGSemSegEvaluator) and sem._num_vis == 2
    assert sem._output_dir == os.path.join(str(tmp_path), "inference", "dgtest_sem")

    name = "dgtest_build_det"
    if name not in DatasetCatalog.list():
        record = {"file_name": "x.png", "image_id": 0, "height": 10, "width": 10, "annotations": [
            {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
        ]}
        DatasetCatalog.register(name, lambda: [record])
        MetadataCatalog.get(name).set(thing_classes=["car"], evaluator_type="coco")
    det = build_evaluator(cfg, name, str(tmp_path / "det"))
    assert isinstance(det, DGCOCOEvaluator)

    MetadataCatalog.get("dgtest_odd_type").set(evaluator_type="cityscapes_panoptic")
    with pytest.raises(ValueError, match="evaluator_type 'cityscapes_panoptic', which VLT"):
        build_evaluator(cfg, "dgtest_odd_type")
    with pytest.raises(ValueError, match="'dgtest_never_registered' has no evaluator_type"):
        build_evaluator(cfg, "dgtest_never_registered")


def test_miou_conventions_against_cityscapesscripts():
    """TEST.MIOU_ABSENT_CLASSES "zero" equals cityscapesscripts' mIoU (a class absent from the
    ground truth but predicted counts as 0); "nan" (Detectron2) leaves it out and is higher."""
    import types

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    from vlt_common.label_spaces import CITYSCAPES_19_CLASSES

    rng = np.random.default_rng(0)
    # Ground truth uses classes 0..9 and ignore; predictions also hit 10..13 (absent classes).
    gt = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255], size=(40, 50))
    noise = rng.integers(0, 14, gt.shape)
    pred = np.where(rng.uniform(size=gt.shape) < 0.7, np.minimum(gt, 18), noise)
    conf = confusion_matrix(gt, pred, 19)

    args = types.SimpleNamespace()
    cs_conf = cs_eval.generateMatrix(args)
    valid = gt != 255
    for g, p in zip(gt[valid], pred[valid]):
        cs_conf[trainId2label[g].id, trainId2label[p].id] += 1
    scores = {
        label.name: cs_eval.getIouScoreForLabel(label.id, cs_conf, args)
        for label in (trainId2label[t] for t in range(19))
    }
    official = 100 * cs_eval.getScoreAverage(scores, args)

    zero = sem_seg_metrics(conf, CITYSCAPES_19_CLASSES, "zero")
    nan = sem_seg_metrics(conf, CITYSCAPES_19_CLASSES, "nan")
    assert zero["mIoU"] == pytest.approx(official, abs=1e-9)
    for name in CITYSCAPES_19_CLASSES:
        expected = 100 * scores[name]
        assert (np.isnan(zero[f"IoU-{name}"]) and np.isnan(expected)) or zero[
            f"IoU-{name}"] == pytest.approx(expected, abs=1e-9), name
    # Classes 10..13 were predicted without ground truth: 0 in the official mean, out in "nan".
    assert zero["IoU-sky"] == 0.0 and np.isnan(nan["IoU-sky"]) and np.isnan(zero["IoU-train"])
    present = [scores[c] for c in CITYSCAPES_19_CLASSES[:10]]
    assert nan["mIoU"] == pytest.approx(100 * np.mean(present))
    assert nan["mIoU"] > zero["mIoU"] + 1
    with pytest.raises(ValueError, match="TEST.MIOU_ABSENT_CLASSES is 'skip'"):
        sem_seg_metrics(conf, CITYSCAPES_19_CLASSES, "skip")


def test_build_evaluator_reads_the_miou_convention(tmp_path, pairs):
    cfg = _cfg(tmp_path)
    cfg.TEST.MIOU_ABSENT_CLASSES = "zero"
    evaluator = build_evaluator(cfg, _register_meta("dgtest_sem"))
    evaluator._distributed = False
    for inp, pred in zip(pairs, (PRED1, PRED2)):
        evaluator.process([inp], [{"sem_seg": _scores(pred)}])
    res = evaluator.evaluate()["sem_seg"]
    # Class "d" is predicted but never in the ground truth: IoU 0, in the mean.
    assert res["IoU-d"] == 0.0
    assert res["mIoU"] == pytest.approx(100 * np.mean([6 / 11, 8 / 11, 3 / 4, 0]))
