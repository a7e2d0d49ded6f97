"""The DG report: rPD, tables, dg_report.json / dg_report.png, segmentation and detection (through
Detectron2's COCOEvaluator on hand-made detections), and a SynthDG pass through the evaluator."""
import json
import logging
import math
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from vlt_common.benchmarks.synthdg import SynthDGSpec, register_synthdg
from vlt_common.config import add_vlt_common_config
from vlt_common.evaluation import build_evaluator, relative_performance, write_dg_report

NAN = float("nan")


def test_relative_performance():
    assert relative_performance(30.0, 60.0) == 50.0
    assert relative_performance(60.0, 60.0) == 100.0
    assert math.isnan(relative_performance(10.0, 0.0))
    assert math.isnan(relative_performance(NAN, 50.0))
    assert math.isnan(relative_performance(10.0, NAN))


def _sem_results():
    for name, domain in (("dgrep_src", "source"), ("dgrep_fog", "fog"), ("dgrep_night", "night")):
        MetadataCatalog.get(name).set(domain=domain)
    return OrderedDict(
        dgrep_src={"sem_seg": {"mIoU": 60.0, "pACC": 90.0, "IoU-road": 80.0, "IoU-car": 40.0}},
        dgrep_fog={"sem_seg": {"mIoU": 30.0, "pACC": 70.0, "IoU-road": 50.0, "IoU-car": NAN}},
        dgrep_night={"sem_seg": {"mIoU": 15.0, "pACC": 60.0, "IoU-road": 20.0, "IoU-car": 10.0}},
    )


def test_semantic_report_values_json_png_and_table(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vlt_common.evaluation.dg_report"):
        report = write_dg_report(
            _sem_results(), source_dataset="dgrep_src", output_dir=str(tmp_path)
        )
    with open(tmp_path / "dg_report.json") as f:
        saved = json.load(f)
    assert saved["source"] == "dgrep_src" and saved["targets"] == ["dgrep_fog", "dgrep_night"]
    assert "100 * metric(target) / metric(source)" in saved["rPD_definition"]
    sem = saved["tasks"]["sem_seg"]
    assert sem["metric"] == "mIoU"
    fog = sem["datasets"]["dgrep_fog"]
    assert fog["domain"] == "fog" and fog["metrics"] == {"mIoU": 30.0, "pACC": 70.0}
    assert fog["rPD"] == {"mIoU": 50.0, "pACC": pytest.approx(100 * 70 / 90)}
    assert fog["per_class"] == {"road": 50.0, "car": None}  # NaN is written as null
    assert sem["datasets"]["dgrep_src"]["rPD"]["mIoU"] == 100.0
    mean = sem["mean_target"]
    assert mean["metrics"]["mIoU"] == 22.5 and mean["rPD"]["mIoU"] == 37.5
    assert mean["per_class"] == {"road": 35.0, "car": 10.0}  # NaN left out of the mean
    assert saved["summary"] == {
        "sem_seg/mIoU/mean_target": 22.5,
        "sem_seg/mIoU/rPD": 37.5,
        "sem_seg/pACC/mean_target": 65.0,
        "sem_seg/pACC/rPD": pytest.approx(100 * 65 / 90),
        "mean_target": 22.5,
        "source": 60.0,
        "rPD": 37.5,
    }
    assert report["summary"]["mean_target"] == 22.5
    png = Image.open(tmp_path / "dg_report.png")
    assert png.format == "PNG" and png.size[0] > 800 and png.size[1] > 300
    log = "\n".join(r.getMessage() for r in caplog.records)
    for text in ("dgrep_night", "night", "37.5", "mean (targets)", "road"):
        assert text in log
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_report_input_errors(tmp_path):
    results = _sem_results()
    with pytest.raises(KeyError, match="'dgrep_rain' is not among"):
        write_dg_report(results, source_dataset="dgrep_rain", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="look like one dataset's results"):
        write_dg_report(results["dgrep_fog"], source_dataset=None, output_dir=str(tmp_path))
    # Without a source name the first dataset is the source.
    report = write_dg_report(results, source_dataset="", output_dir=str(tmp_path))
    assert report["source"] == "dgrep_src"


def _register_det(name, domain, records):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(
            thing_classes=["car", "person"], evaluator_type="coco", domain=domain
        )


def _det_records():
    boxes = [
        [[2, 2, 20, 14, 0], [30, 5, 40, 30, 1]],
        [[5, 5, 25, 20, 0], [40, 10, 55, 38, 1], [10, 22, 22, 36, 1]],
    ]
    return [
        {
            "file_name": f"img{k}.png", "image_id": k, "height": 40, "width": 60,
            "annotations": [
                {"bbox": b[:4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": b[4], "iscrowd": 0}
                for b in bs
            ],
        }
        for k, bs in enumerate(boxes)
    ]


def _predict(record, keep):
    anns = [a for a in record["annotations"] if keep(a)]
    inst = Instances((40, 60))
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
    inst.pred_boxes = Boxes(boxes.view(-1, 4))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return {"instances": inst}


def test_detection_report_on_two_domains(tmp_path):
    records = _det_records()
    _register_det("dgrep_det_src", "source", records)
    _register_det("dgrep_det_tgt", "fog", records)
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    results = OrderedDict()
    # Source: every box found. Target: the cars are missed entirely.
    every_box, persons_only = (lambda a: True), (lambda a: a["category_id"] == 1)
    for name, keep in (("dgrep_det_src", every_box), ("dgrep_det_tgt", persons_only)):
        evaluator = build_evaluator(cfg, name, str(tmp_path / name))
        evaluator.reset()
        for record in records:
            evaluator.process([record], [_predict(record, keep)])
        results[name] = evaluator.evaluate()
    assert results["dgrep_det_src"]["bbox"]["AP"] == pytest.approx(100.0)
    report = write_dg_report(results, source_dataset="dgrep_det_src", output_dir=str(tmp_path))
    bbox = report["tasks"]["bbox"]
    target = bbox["datasets"]["dgrep_det_tgt"]
    assert target["domain"] == "fog"
    assert target["per_class"]["car"] == pytest.approx(0.0)
    assert target["per_class"]["person"] == pytest.approx(100.0)
    assert target["metrics"]["AP"] == pytest.approx(50.0)
    assert target["rPD"] == {"AP": pytest.approx(50.0), "AP50": pytest.approx(50.0),
                             "AP75": pytest.approx(50.0)}
    assert bbox["mean_target"]["metrics"]["AP"] == pytest.approx(50.0)
    assert report["summary"]["mean_target"] == pytest.approx(50.0)
    with open(tmp_path / "dg_report.json") as f:
        assert json.load(f)["tasks"]["bbox"]["metric"] == "AP"
    assert os.path.getsize(tmp_path / "dg_report.png") > 0


def test_synthdg_domains_through_the_evaluator_and_report(tmp_path):
    """A model that is perfect on the source and predicts "road" everywhere on fog."""
    spec = SynthDGSpec(seed=7, height=64, width=128, num_train=0, num_val=2)
    register_synthdg(str(tmp_path / "data"), spec, prefix="synthdg_t_eval")
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    results = OrderedDict()
    for domain in ("source", "fog"):
        name = f"synthdg_t_eval_{domain}_val"
        evaluator = build_evaluator(cfg, name)
        evaluator.reset()
        for record in DatasetCatalog.get(name):
            gt = torch.from_numpy(np.array(Image.open(record["sem_seg_file_name"]), np.int64))
            if domain == "fog":
                gt = torch.zeros_like(gt)
            scores = torch.nn.functional.one_hot(gt, 19).permute(2, 0, 1).float()
            evaluator.process([record], [{"sem_seg": scores}])
        results[name] = evaluator.evaluate()
    report = write_dg_report(results, source_dataset=None, output_dir=cfg.OUTPUT_DIR)
    sem = report["tasks"]["sem_seg"]
    assert sem["datasets"]["synthdg_t_eval_source_val"]["metrics"]["mIoU"] == pytest.approx(100.0)
    fog = sem["datasets"]["synthdg_t_eval_fog_val"]
    assert fog["domain"] == "fog" and fog["per_class"]["road"] > 0
    assert 0 < fog["rPD"]["mIoU"] < 20
    overlays = os.path.join(cfg.OUTPUT_DIR, "inference", "synthdg_t_eval_fog_val", "overlays")
    assert sorted(os.listdir(overlays)) == ["00000.png", "00001.png"]


def test_failed_dataset_and_miou_convention_are_named(tmp_path, caplog):
    """One test set that failed at evaluation time: the report is written for the others and
    names the failure; the mIoU convention is stated in the tables and the json."""
    results = _sem_results()
    del results["dgrep_night"]
    with caplog.at_level(logging.INFO, logger="vlt_common.evaluation.dg_report"):
        write_dg_report(
            results, source_dataset="dgrep_src", output_dir=str(tmp_path),
            failed={"dgrep_night": "FileNotFoundError: no images under /x/night"},
            miou_convention="zero",
        )
    with open(tmp_path / "dg_report.json") as f:
        saved = json.load(f)
    assert saved["failed"] == {"dgrep_night": "FileNotFoundError: no images under /x/night"}
    assert saved["targets"] == ["dgrep_fog"]
    assert saved["miou_convention"].startswith("zero: a class absent from the ground truth but")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "FAILED, not evaluated: dgrep_night: FileNotFoundError: no images under /x/night" in text
    assert "mIoU convention zero:" in text


class _Constant(torch.nn.Module):
    def forward(self, inputs):
        return [{"value": torch.tensor(float(x["value"]))} for x in inputs]


class _MeanEvaluator:
    """A stand-in evaluator: reports the mean of the model's outputs as "mIoU"."""

    def reset(self):
        self.values = []

    def process(self, inputs, outputs):
        self.values += [float(o["value"]) for o in outputs]

    def evaluate(self):
        return {"sem_seg": {"mIoU": float(np.mean(self.values)), "pACC": 50.0}}


def test_trainer_test_reports_the_others_when_one_dataset_fails(tmp_path):
    from vlt_common.engine import VLTTrainer

    class Trainer(VLTTrainer):
        @classmethod
        def build_test_loader(cls, cfg, name):
            if name == "dgtrain_broken":
                raise FileNotFoundError("image folder /data/broken does not exist.")
            return [[{"value": 40.0}], [{"value": 20.0 if name == "dgtrain_tgt" else 60.0}]]

        @classmethod
        def build_evaluator(cls, cfg, name, output_folder=None):
            return _MeanEvaluator()

    cfg = get_cfg()
    add_vlt_common_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = ("dgtrain_src", "dgtrain_broken", "dgtrain_tgt")
    results = Trainer.test(cfg, _Constant())
    assert results["dgtrain_src"]["sem_seg"]["mIoU"] == 50.0
    assert "dgtrain_broken" not in results
    with open(tmp_path / "dg_report.json") as f:
        saved = json.load(f)
    assert saved["failed"] == {
        "dgtrain_broken": "FileNotFoundError: image folder /data/broken does not exist."
    }
    assert saved["tasks"]["sem_seg"]["datasets"]["dgtrain_tgt"]["rPD"]["mIoU"] == 60.0
    assert saved["miou_convention"].startswith("nan:")
    cfg.DATASETS.TEST = ("dgtrain_broken",)
    with pytest.raises(FileNotFoundError, match="/data/broken"):
        Trainer.test(cfg, _Constant())
