"""End to end on a tiny generated SynthDG: VLTTrainer trains the demo config (LSJ mapper, tiny
CLIP trunk, ViTDet Mask R-CNN), the loss falls, the source AP is above zero and the DG report
covers two domains."""
import json
import os

import numpy as np
import pytest
import torch

from vlt_common.data.synthdg import SynthDGSpec, register_synthdg
from vlt_common.engine.defaults import get_vlt_cfg
from vlt_common.engine.trainer import VLTTrainer

from .conftest import CONFIGS

PREFIX = "vltdet_e2e"
SOURCE, TARGET = f"{PREFIX}_det_source_val", f"{PREFIX}_det_fog_val"
ITERS = 160


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    register_synthdg(str(root), SynthDGSpec(seed=3, num_train=24, num_val=4), prefix=PREFIX)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "vltdet_tiny_synthdg.yaml"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (f"{PREFIX}_det_source_train",),
            "DATASETS.TEST", (SOURCE, TARGET),
            "TEST.DG.SOURCE_DATASET", SOURCE,
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.MAX_ITER", ITERS,
            "SOLVER.STEPS", (ITERS - 20,),
            "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.CHECKPOINT_PERIOD", ITERS,
            "OUTPUT_DIR", str(tmp_path_factory.mktemp("out")),
        ]
    )  # fmt: skip
    cfg.freeze()
    torch.manual_seed(0)
    trainer = VLTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, trainer


def _total_losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["total_loss"] for r in rows if "total_loss" in r]


@pytest.mark.slow
def test_loss_falls_and_source_ap_positive(trained):
    cfg, trainer = trained
    losses = _total_losses(cfg.OUTPUT_DIR)
    assert len(losses) >= 4
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    results = trainer._last_eval_results
    assert results[SOURCE]["bbox"]["AP"] > 0, results[SOURCE]
    assert set(results[SOURCE]) == {"bbox", "segm"}


@pytest.mark.slow
def test_dg_report_on_two_domains(trained):
    cfg, trainer = trained
    with open(os.path.join(cfg.OUTPUT_DIR, "dg_report.json")) as f:
        report = json.load(f)
    assert report["source"] == SOURCE and report["targets"] == [TARGET]
    bbox = report["tasks"]["bbox"]
    assert set(bbox["datasets"]) == {SOURCE, TARGET}
    assert bbox["datasets"][TARGET]["domain"] == "fog"
    source_ap = bbox["datasets"][SOURCE]["metrics"]["AP"]
    target_ap = bbox["datasets"][TARGET]["metrics"]["AP"]
    assert bbox["mean_target"]["metrics"]["AP"] == pytest.approx(target_ap)
    assert bbox["datasets"][TARGET]["rPD"]["AP"] == pytest.approx(100 * target_ap / source_ap)
    assert "car" in bbox["datasets"][SOURCE]["per_class"]
    assert os.path.getsize(os.path.join(cfg.OUTPUT_DIR, "dg_report.png")) > 0
    assert trainer._last_eval_results["dg"]["mean_target"] == pytest.approx(target_ap)
