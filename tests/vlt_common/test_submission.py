"""Benchmark-server submissions on tiny Cityscapes and ACDC test splits in the official layouts:
label ids, file names, sizes and the archives' contents, through ``VLTTrainer.test``."""
import os
import zipfile

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from tests.vlt_common.test_datasets import registered_at  # noqa: F401 (fixture)
from vlt_common.engine import VLTTrainer, get_vlt_cfg
from vlt_common.evaluation import build_evaluator
from vlt_common.evaluation.submission import (
    SubmissionWriter,
    submission_path,
    train_ids_to_label_ids,
)
from vlt_common.utils.atomic import write_png

# Cityscapes label id of train ids 0..18 (cityscapesscripts' labels.py, by hand).
LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]

# (relative image path under the datasets root, (height, width)): two Cityscapes cities and two
# ACDC conditions, with different sizes so that a size mix-up shows.
CITYSCAPES_IMAGES = {
    "cityscapes/leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png": (32, 64),
    "cityscapes/leftImg8bit/test/berlin/berlin_000001_000019_leftImg8bit.png": (32, 64),
    "cityscapes/leftImg8bit/test/bielefeld/bielefeld_000000_007186_leftImg8bit.png": (40, 48),
}
ACDC_IMAGES = {
    "acdc/rgb_anon/fog/test/GOPR0475/GOPR0475_frame_000247_rgb_anon.png": (36, 64),
    "acdc/rgb_anon/night/test/GOPR0355/GOPR0355_frame_000138_rgb_anon.png": (36, 64),
    "acdc/rgb_anon/rain/test/GOPR0402/GOPR0402_frame_000159_rgb_anon.png": (36, 64),
    "acdc/rgb_anon/snow/test/GOPR0122/GOPR0122_frame_000651_rgb_anon.png": (40, 56),
}


def test_train_ids_map_to_cityscapes_label_ids():
    assert train_ids_to_label_ids(np.arange(19)).tolist() == LABEL_IDS
    assert train_ids_to_label_ids(np.array([[13, 0]])).dtype == np.uint8


def test_submission_paths():
    assert submission_path("/d/leftImg8bit/test/bonn/bonn_000004_000019_leftImg8bit.png") == (
        "bonn/bonn_000004_000019_pred.png"
    )
    acdc = "/d/acdc/rgb_anon/snow/test/GOPR0122/GOPR0122_frame_000651_rgb_anon.png"
    assert submission_path(acdc) == "snow/test/GOPR0122/GOPR0122_frame_000651_rgb_anon.png"
    assert submission_path(acdc, "acdc") == submission_path(acdc)
    with pytest.raises(ValueError, match="no benchmark-server format"):
        submission_path("/d/gta5/images/00001.png")
    with pytest.raises(ValueError, match="<city>_<sequence>_<frame>_leftImg8bit.png"):
        submission_path("/d/x_leftImg8bit.png", "cityscapes")
    with pytest.raises(ValueError, match="rgb_anon/<condition>/<split>/<sequence>"):
        submission_path("/d/acdc/other/GOPR0122_frame_000651_rgb_anon.png")
    with pytest.raises(ValueError, match="TEST.SUBMISSION.FORMAT must be one of"):
        submission_path(acdc, "kitti")


class _PositionModel(torch.nn.Module):
    """Predicts train id (x + y) % 19 at every pixel of the original image size."""

    def forward(self, inputs):
        outputs = []
        for inp in inputs:
            y, x = torch.meshgrid(
                torch.arange(inp["height"]), torch.arange(inp["width"]), indexing="ij"
            )
            scores = torch.nn.functional.one_hot((x + y) % 19, 19).permute(2, 0, 1).float()
            outputs.append({"sem_seg": scores})
        return outputs


def _write_split(root, images):
    rng = np.random.default_rng(0)
    for rel, (h, w) in images.items():
        write_png(str(root / rel), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _cfg(out_dir, datasets):
    cfg = get_vlt_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "semantic_dg"
    cfg.INPUT.RESIZE_TEST = (0, 0)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.TEST = datasets
    cfg.OUTPUT_DIR = str(out_dir / "out")
    cfg.TEST.SUBMISSION.DIR = str(out_dir / "submission")
    return cfg


def test_eval_only_writes_both_servers_files_and_zips(registered_at, tmp_path):  # noqa: F811
    root = registered_at
    _write_split(root, CITYSCAPES_IMAGES)
    _write_split(root, ACDC_IMAGES)
    cfg = _cfg(tmp_path, ("cityscapes_test", "acdc_test"))
    results = VLTTrainer.test(cfg, _PositionModel())
    assert results == {"cityscapes_test": {}, "acdc_test": {}}  # no metrics, no DG report
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "dg_report.json"))

    sub = tmp_path / "submission"
    expected = {
        "cityscapes_test": {
            "berlin/berlin_000000_000019_pred.png": (32, 64),
            "berlin/berlin_000001_000019_pred.png": (32, 64),
            "bielefeld/bielefeld_000000_007186_pred.png": (40, 48),
        },
        "acdc_test": {
            "fog/test/GOPR0475/GOPR0475_frame_000247_rgb_anon.png": (36, 64),
            "night/test/GOPR0355/GOPR0355_frame_000138_rgb_anon.png": (36, 64),
            "rain/test/GOPR0402/GOPR0402_frame_000159_rgb_anon.png": (36, 64),
            "snow/test/GOPR0122/GOPR0122_frame_000651_rgb_anon.png": (40, 56),
        },
    }
    for dataset, files in expected.items():
        with zipfile.ZipFile(sub / f"{dataset}.zip") as archive:
            assert sorted(archive.namelist()) == sorted(files)
            for name, (h, w) in files.items():
                with archive.open(name) as f:
                    image = Image.open(f)
                    assert image.mode == "L" and image.size == (w, h)
                    ids = np.asarray(image)
                y, x = np.mgrid[0:h, 0:w]
                np.testing.assert_array_equal(ids, np.array(LABEL_IDS)[(x + y) % 19])
                with open(sub / dataset / name, "rb") as f:
                    assert f.read() == archive.read(name)


def test_labelled_split_gets_metrics_and_submission(registered_at, tmp_path):  # noqa: F811
    root = registered_at
    rel = "cityscapes/leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    _write_split(root, {rel: (32, 48)})
    y, x = np.mgrid[0:32, 0:48]
    label = "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"
    write_png(str(root / label), ((x + y) % 19).astype(np.uint8))
    cfg = _cfg(tmp_path, ("cityscapes_val",))
    results = VLTTrainer.test(cfg, _PositionModel())
    assert results["cityscapes_val"]["sem_seg"]["mIoU"] == 100.0
    with zipfile.ZipFile(tmp_path / "submission" / "cityscapes_val.zip") as archive:
        assert archive.namelist() == ["lindau/lindau_000000_000019_pred.png"]


def test_bad_image_names_fail_before_inference(registered_at, tmp_path):  # noqa: F811
    _write_split(registered_at, {"cityscapes/leftImg8bit/test/bonn/bonn_leftImg8bit.png": (32, 32)})
    cfg = _cfg(tmp_path, ("cityscapes_test",))
    with pytest.raises(ValueError, match="bonn_leftImg8bit.png: a Cityscapes test image is named"):
        build_evaluator(cfg, "cityscapes_test")


def test_missing_predictions_are_an_error(registered_at, tmp_path):  # noqa: F811
    _write_split(registered_at, ACDC_IMAGES)
    writer = SubmissionWriter("acdc_test", str(tmp_path), distributed=False)
    writer.reset()
    first = DatasetCatalog.get("acdc_test")[0]
    inp = dict(first, height=36, width=64)
    writer.process([inp], _PositionModel()([inp]))
    with pytest.raises(RuntimeError, match="3 of 4 test images have no prediction"):
        writer.evaluate()
    with pytest.raises(ValueError, match=r"at the image's size \(H, W\)=\(36, 65\)"):
        writer.process([dict(inp, width=65)], _PositionModel()([inp]))
