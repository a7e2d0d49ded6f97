"""End to end on a tiny generated SynthDG: VLTTrainer trains the demo config (LSJ mapper, tiny
trunk, ViTDet pyramid and box head, boxes only), the loss falls, the held-out source and a target
domain are evaluated, the DG report covers the two domains, and the demo tool draws detections.

It does NOT check that the model detects: a test-sized run does not learn to detect yet. Measured
(24 training scenes, 200 iterations, 8 held-out scenes): held-out source box AP50 0.19, AP50 on
the training scenes themselves 0.09, both about zero; the full demo (400 scenes, 400 iterations)
reaches 0.8 (README, VLTDet). A threshold on AP would pass or fail by chance."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from tests.paths import CONFIGS
from tests.tool_loader import load_tool
from vlt_common.benchmarks.synthdg import SynthDGSpec, register_synthdg
from vlt_common.engine.defaults import get_vlt_cfg
from vlt_common.engine.trainer import VLTTrainer

PREFIX = "vltdet_e2e"
TRAIN = f"{PREFIX}_det_source_train"
SOURCE, TARGET = f"{PREFIX}_det_source_val", f"{PREFIX}_det_fog_val"
NUM_TRAIN, NUM_VAL = 24, 8
ITERS = 200


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    spec = SynthDGSpec(seed=3, num_train=NUM_TRAIN, num_val=NUM_VAL)
    register_synthdg(str(root), spec, prefix=PREFIX)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "vltdet_tiny_synthdg.yaml"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (TRAIN,),
            "DATASETS.TEST", (SOURCE, TARGET),
            "TEST.DG.SOURCE_DATASET", SOURCE,
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.MAX_ITER", ITERS,
            "SOLVER.STEPS", (ITERS - 20,),
            "SOLVER.WARMUP_ITERS", 20,
            "SOLVER.CHECKPOINT_PERIOD", 10 * ITERS,  # only model_final.pth
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
def test_loss_falls_and_heldout_scenes_are_evaluated(trained):
    cfg, trainer = trained
    losses = _total_losses(cfg.OUTPUT_DIR)
    assert len(losses) >= 4
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    # the evaluation after training covered the held-out source scenes and the target domain,
    # boxes only (the demo config trains without masks)
    for name in (SOURCE, TARGET):
        assert set(trainer._last_eval_results[name]) == {"bbox"}, name


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
    rpd = bbox["datasets"][TARGET]["rPD"]["AP"]
    if source_ap > 0:
        assert rpd == pytest.approx(100 * target_ap / source_ap)
    else:  # the short run may not detect anything (see above): no ratio, NaN written as null
        assert rpd is None
    assert "car" in bbox["datasets"][SOURCE]["per_class"]
    assert os.path.getsize(os.path.join(cfg.OUTPUT_DIR, "dg_report.png")) > 0
    assert trainer._last_eval_results["dg"]["mean_target"] == pytest.approx(target_ap)


@pytest.mark.slow
def test_demo_draws_detections(trained, tmp_path):
    cfg, _ = trained
    demo = load_tool("demo")
    image = DatasetCatalog.get(SOURCE)[0]["file_name"]
    demo_cfg = cfg.clone()
    demo_cfg.defrost()
    demo_cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    # a low threshold: the point is that boxes reach the picture, not the tiny model's quality
    (written,) = demo.run(demo_cfg, [image], str(tmp_path), MetadataCatalog.get(SOURCE), 0.05)
    drawn = np.asarray(Image.open(written).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    assert (drawn != original).any(axis=2).mean() > 0.005
