"""Fail fast: every train and test dataset is checked before the first iteration."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vlt_common.data.checks import check_dataset, check_datasets
from vlt_common.data.datasets import SemSegPart, register_dg_coco, register_dg_sem_seg
from vlt_common.utils.atomic import atomic_write_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _register_sem(name, root, image_hw=(4, 6), label_hw=(4, 6)):
    os.makedirs(root / "img", exist_ok=True)
    os.makedirs(root / "lbl", exist_ok=True)
    Image.fromarray(np.zeros(image_hw + (3,), np.uint8)).save(root / "img/a.png")
    Image.fromarray(np.zeros(label_hw, np.uint8)).save(root / "lbl/a_label.png")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_dg_sem_seg(name, [SemSegPart(str(root / "img"), ".png", str(root / "lbl"),
                                          "_label.png")])
    return name


def test_sizes_readability_and_emptiness(tmp_path):
    check_dataset(_register_sem("dgcheck_ok", tmp_path / "ok"))
    with pytest.raises(ValueError, match=r"lbl/a_label.png has size \(h, w\)=\(4, 5\) but its "
                                         r"image \S*img/a.png has \(h, w\)=\(4, 6\)"):
        check_dataset(_register_sem("dgcheck_size", tmp_path / "size", label_hw=(4, 5)))
    _register_sem("dgcheck_corrupt", tmp_path / "corrupt")
    (tmp_path / "corrupt/img/a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image \S*corrupt/img/a.png"):
        check_dataset("dgcheck_corrupt")
    # A COCO file with no images.
    json_file = str(tmp_path / "empty.json")
    atomic_write_bytes(json_file, json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]}
    ))
    if "dgcheck_empty_coco" not in DatasetCatalog.list():
        register_dg_coco("dgcheck_empty_coco", json_file, str(tmp_path))
    with pytest.raises(ValueError, match=r"'dgcheck_empty_coco' is empty \(json_file=\S*empty"):
        check_dataset("dgcheck_empty_coco")
    # With a layout hint (every built-in name has its expected tree), the error prints it.
    if "dgcheck_empty_hint" not in DatasetCatalog.list():
        register_dg_coco("dgcheck_empty_hint", json_file, str(tmp_path),
                         missing_hint="Expected layout under /data: my/tree")
    with pytest.raises(ValueError, match=r"'dgcheck_empty_hint' is empty .*\nExpected layout"):
        check_dataset("dgcheck_empty_hint")
    with pytest.raises(KeyError, match="'dgcheck_nowhere' is not registered"):
        check_dataset("dgcheck_nowhere")


def test_check_datasets_reports_every_failure_with_its_key(tmp_path):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (_register_sem("dgcheck_ok", tmp_path / "ok"),)
    cfg.DATASETS.TEST = ("dgcheck_ok", "dgcheck_missing_a", "dgcheck_missing_b")
    with pytest.raises(ValueError) as e:
        check_datasets(cfg)
    message = str(e.value)
    assert message.startswith("2 dataset(s) of the config cannot be used")
    assert "DATASETS.TEST entry 'dgcheck_missing_a'" in message
    assert "DATASETS.TEST entry 'dgcheck_missing_b'" in message
    assert "dgcheck_ok" not in message


def test_check_datasets_registers_corrupted_test_domains(tmp_path):
    """A trainer built from Python (no setup_cfg) accepts <base>_c_<corruption>_<severity> test
    domains: the check registers them; a bad one is reported with its key."""
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (_register_sem("dgcheck_clean", tmp_path / "clean"),)
    cfg.DATASETS.TEST = ("dgcheck_clean_c_fog_2",)
    check_datasets(cfg)
    assert MetadataCatalog.get("dgcheck_clean_c_fog_2").corruption == "fog"
    cfg.DATASETS.TEST = ("dgcheck_clean_c_fog_9",)
    with pytest.raises(ValueError, match="DATASETS.TEST entry 'dgcheck_clean_c_fog_9': .*sever"):
        check_datasets(cfg)


@pytest.mark.slow
def test_train_net_stops_before_training_on_an_empty_test_folder(tmp_path):
    """train_net.py with a config whose test set (cityscapes_val) has an empty image folder
    stops at once, naming the folder and the expected layout; nothing is trained or written."""
    from tests.engine.tiny_train_net import tiny_opts

    datasets = tmp_path / "datasets"
    (datasets / "cityscapes/leftImg8bit/val").mkdir(parents=True)
    output = tmp_path / "out"
    opts = tiny_opts(test_domains=("source",))
    opts[opts.index("DATASETS.TEST") + 1] = "('synthdg_tiny_source_val', 'cityscapes_val')"
    cmd = [sys.executable, os.path.join(REPO, "tests/engine/tiny_train_net.py"), "--config-file",
           os.path.join(REPO, "configs/vltseg_tiny_synthdg.yaml"), *opts,
           "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(output)]
    paths = [REPO, os.path.join(REPO, "projects/VLTSeg"), os.path.join(REPO, "projects/VLTDet")]
    env = dict(os.environ, VLT_TINY_SYNTHDG_ROOT=str(tmp_path / "synthdg"),
               DETECTRON2_DATASETS=str(datasets), PYTHONPATH=os.pathsep.join(paths),
               OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert f"no images '*_leftImg8bit.png' under {datasets}/cityscapes/leftImg8bit/val" in log
    assert "DATASETS.TEST entry 'cityscapes_val'" in log
    assert "Expected layout under" in log and "leftImg8bit/{train,val,test}/<city>" in log
    assert "Starting training" not in log and "Parameters (trainable / total)" not in log
    assert not (output / "model_final.pth").exists() and not (output / "metrics.json").exists()
