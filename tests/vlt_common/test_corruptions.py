"""Corrupted test domains (Cityscapes-C style): registration, the corrupted pixels, determinism,
the semantic mapper's hook and the grouped DG report."""
import argparse
import json
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import vlt_common.benchmarks.synthdg.builtin  # noqa: F401  (registers the synthdg_* names used here)
from vlt_common.data.corruptions import (
    COMMON_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corrupt_image,
    parse_corrupted_name,
    read_dataset_image,
    register_corrupted_dataset,
    register_corrupted_datasets,
)
from vlt_common.data.datasets import SemSegPart, register_dg_sem_seg
from vlt_common.data.io import read_image
from vlt_common.evaluation.dg_report import build_dg_report, format_dg_tables
from vlt_common.utils.atomic import write_png

# Corruptions whose mean absolute change grows strictly with the severity on the test image.
# Not the others: glass blur, frost and fog saturate (their severity 4 is not farther than 3 on a
# 64x96 image), pixelate depends on how the blocks meet the image's edges, and saturate goes from
# less saturated (1, 2) to more saturated (3..5) by design.
MONOTONE = tuple(
    c for c in CORRUPTIONS if c not in ("glass_blur", "frost", "fog", "pixelate", "saturate")
)


def _test_image():
    """A 64x96 RGB image with gradients and a checkerboard (blur and noise both show)."""
    y, x = np.mgrid[0:64, 0:96]
    return np.stack(
        [x * 255 // 96, y * 255 // 64, ((x // 16 + y // 16) % 2) * 200 + 20], -1
    ).astype(np.uint8)


def _distance(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A registered 2-image semantic dataset ``corr_tiny`` (64x96 images, train-id labels)."""
    root = tmp_path_factory.mktemp("corr")
    for i in range(2):
        write_png(str(root / "img" / f"a{i}.png"), np.roll(_test_image(), 8 * i, axis=1))
        write_png(str(root / "lbl" / f"a{i}.png"), np.full((64, 96), i, np.uint8))
    part = SemSegPart(str(root / "img"), ".png", str(root / "lbl"), ".png")
    register_dg_sem_seg("corr_tiny", [part])
    MetadataCatalog.get("corr_tiny").set(domain="tiny")
    yield "corr_tiny"
    for name in [n for n in DatasetCatalog.list() if n.startswith("corr_tiny")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_the_19_corruptions_are_the_packages():
    from imagecorruptions import get_corruption_names

    assert COMMON_CORRUPTIONS == tuple(get_corruption_names("common"))
    assert EXTRA_CORRUPTIONS == tuple(get_corruption_names("validation"))
    assert len(CORRUPTIONS) == 19


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_changes_the_image_and_grows_with_severity(corruption):
    image = _test_image()
    distances = []
    for severity in range(1, 6):
        out = corrupt_image(image, corruption, severity, seed=3)
        assert out.shape == image.shape and out.dtype == np.uint8
        distances.append(_distance(out, image))
    assert min(distances) > 0.5, distances  # every severity really corrupts
    if corruption in MONOTONE:
        assert all(a < b for a, b in zip(distances, distances[1:])), distances
    elif corruption not in ("saturate", "pixelate"):
        assert distances[4] > distances[0], distances


def test_corruption_is_seeded_and_leaves_the_global_random_state_alone():
    image = _test_image()
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = corrupt_image(image, "gaussian_noise", 3, seed=5)
    assert np.random.rand() == expected_next
    b = corrupt_image(image, "gaussian_noise", 3, seed=5)
    c = corrupt_image(image, "gaussian_noise", 3, seed=6)
    np.testing.assert_array_equal(a, b)
    assert _distance(a, c) > 1.0


def test_corrupt_image_rejects_bad_input():
    image = _test_image()
    with pytest.raises(ValueError, match="unknown corruption 'haze'"):
        corrupt_image(image, "haze", 1, seed=0)
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt_image(image, "fog", 6, seed=0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        corrupt_image(image.astype(np.float32), "fog", 1, seed=0)


def test_parse_corrupted_name():
    assert parse_corrupted_name("cityscapes_val_c_gaussian_noise_3") == {
        "base": "cityscapes_val", "corruption": "gaussian_noise", "severity": 3,
    }
    assert parse_corrupted_name("synthdg_source_val_c_fog_5")["base"] == "synthdg_source_val"
    assert parse_corrupted_name("cityscapes_val") is None


def test_registered_domain_reads_corrupted_deterministic_images(tiny_dataset, tmp_path):
    names = register_corrupted_datasets(
        ["corr_tiny", "corr_tiny_c_fog_3", "corr_tiny_c_shot_noise_1", "corr_tiny_c_fog_3"]
    )
    assert names == ["corr_tiny_c_fog_3", "corr_tiny_c_shot_noise_1"]
    meta = MetadataCatalog.get("corr_tiny_c_fog_3")
    assert (meta.corruption, meta.severity, meta.clean_dataset) == ("fog", 3, "corr_tiny")
    assert meta.domain == "tiny + fog 3" and meta.evaluator_type == "dg_sem_seg"
    assert meta.stuff_classes == MetadataCatalog.get("corr_tiny").stuff_classes
    clean = DatasetCatalog.get("corr_tiny")
    dicts = DatasetCatalog.get("corr_tiny_c_fog_3")
    assert [d["file_name"] for d in dicts] == [d["file_name"] for d in clean]
    assert [d["sem_seg_file_name"] for d in dicts] == [d["sem_seg_file_name"] for d in clean]
    assert all(d["corruption"] == {"name": "fog", "severity": 3} for d in dicts)
    assert all("corruption" not in d for d in DatasetCatalog.get("corr_tiny"))

    first = read_dataset_image(dicts[0], "RGB")
    np.testing.assert_array_equal(first, read_dataset_image(dicts[0], "RGB"))  # deterministic
    clean_image = read_image(dicts[0]["file_name"], "RGB")
    assert first.shape == clean_image.shape and _distance(first, clean_image) > 5
    np.testing.assert_array_equal(read_dataset_image(clean[0], "RGB"), clean_image)
    bgr = read_dataset_image(dicts[0], "BGR")
    np.testing.assert_array_equal(bgr, first[:, :, ::-1])
    # The seed comes from the file name, not its folder: the same picture under the same name
    # elsewhere gets the same noise, under another name other noise.
    noise = DatasetCatalog.get("corr_tiny_c_shot_noise_1")[0]
    a = read_dataset_image(noise, "RGB")
    for name in ("a0.png", "b0.png"):
        shutil.copy(noise["file_name"], tmp_path / name)
    moved = read_dataset_image(dict(noise, file_name=str(tmp_path / "a0.png")), "RGB")
    renamed = read_dataset_image(dict(noise, file_name=str(tmp_path / "b0.png")), "RGB")
    np.testing.assert_array_equal(a, moved)
    assert _distance(a, renamed) > 1.0


def test_semantic_mapper_applies_the_corruption(tiny_dataset):
    from detectron2.data import transforms as T

    from vltseg.data.dataset_mapper import SemanticDGDatasetMapper

    register_corrupted_datasets(["corr_tiny_c_gaussian_noise_2"])
    mapper = SemanticDGDatasetMapper(
        False, augmentations=[T.ResizeShortestEdge(32, 1000)], image_format="RGB",
        num_classes=19,
    )
    corrupted = DatasetCatalog.get("corr_tiny_c_gaussian_noise_2")[0]
    out = mapper(corrupted)
    clean = mapper(DatasetCatalog.get("corr_tiny")[0])
    assert out["image"].shape == clean["image"].shape == (3, 32, 48)
    assert (out["height"], out["width"]) == (64, 96)
    assert _distance(out["image"].numpy(), clean["image"].numpy()) > 5
    expected = T.ResizeShortestEdge(32, 1000).get_transform(np.zeros((64, 96, 3))).apply_image(
        read_dataset_image(corrupted, "RGB")
    )
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected)


def test_bad_corrupted_names_fail_with_a_clear_error(tiny_dataset):
    with pytest.raises(ValueError, match="unknown corruption 'haze'"):
        register_corrupted_datasets(["corr_tiny_c_haze_2"])
    with pytest.raises(ValueError, match="severity must be one of"):
        register_corrupted_datasets(["corr_tiny_c_fog_9"])
    with pytest.raises(KeyError, match="'no_such_val' is not registered"):
        register_corrupted_datasets(["no_such_val_c_fog_1"])
    with pytest.raises(ValueError, match="semantic-segmentation datasets"):
        register_corrupted_dataset("synthdg_det_source_val", "fog", 1)


def test_synthdg_has_corrupted_domains():
    name = register_corrupted_dataset("synthdg_source_val", "fog", 3)
    assert name == "synthdg_source_val_c_fog_3"
    meta = MetadataCatalog.get(name)
    assert meta.clean_dataset == "synthdg_source_val" and meta.evaluator_type == "dg_sem_seg"


def _corruption_results():
    results = OrderedDict(src={"sem_seg": {"mIoU": 80.0, "pACC": 90.0}})
    results["tgt"] = {"sem_seg": {"mIoU": 40.0, "pACC": 60.0}}
    values = {  # corruption -> mIoU at severities 1..3 (a partial sweep)
        "fog": (70.0, 60.0, 50.0),
        "gaussian_noise": (50.0, 30.0, 10.0),
        "spatter": (76.0, 72.0, None),
    }
    for corruption, per_severity in values.items():
        for severity, miou in enumerate(per_severity, start=1):
            if miou is not None:
                name = register_corrupted_dataset("src", corruption, severity)
                results[name] = {"sem_seg": {"mIoU": miou, "pACC": 50.0}}
    return results


@pytest.fixture
def src_dataset(tmp_path):
    register_dg_sem_seg("src", [SemSegPart(str(tmp_path), ".png")])
    yield
    for name in [n for n in DatasetCatalog.list() if n == "src" or n.startswith("src_c_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_report_groups_corruptions_by_corruption_and_severity(src_dataset):
    report = build_dg_report(_corruption_results(), "src")
    assert report["targets"] == ["tgt"]  # corrupted domains are not averaged as targets
    assert len(report["corrupted"]) == 8
    sem = report["tasks"]["sem_seg"]
    assert sem["mean_target"]["metrics"]["mIoU"] == 40.0
    grouped = sem["corruptions"]["src"]
    assert list(grouped["corruptions"]) == ["gaussian_noise", "fog", "spatter"]  # package order
    fog = grouped["corruptions"]["fog"]
    assert fog["severities"] == {1: 70.0, 2: 60.0, 3: 50.0}
    assert fog["mean"] == 60.0 and fog["rPD"] == 75.0
    assert grouped["corruptions"]["gaussian_noise"]["mean"] == 30.0
    common = grouped["means"]["common"]  # fog and gaussian noise
    assert common["severities"] == {1: 60.0, 2: 45.0, 3: 30.0}
    assert common["mean"] == 45.0 and common["rPD"] == 56.25
    extra = grouped["means"]["extra"]  # spatter only, severities 1 and 2
    assert extra["severities"] == {1: 76.0, 2: 72.0} and extra["mean"] == 74.0
    assert extra["rPD"] == 92.5
    summary = report["summary"]
    assert summary["sem_seg/mIoU/src_c/mean_common"] == 45.0
    assert summary["sem_seg/mIoU/src_c/mean_common/rPD"] == 56.25
    assert summary["mean_target"] == 40.0

    text = format_dg_tables(report)
    assert "Corruption robustness, sem_seg mIoU on src_c_<corruption>_<severity>" in text
    fog_row = next(line for line in text.splitlines() if line.startswith("| fog"))
    assert [c.strip() for c in fog_row.strip("|").split("|")] == [
        "fog", "70.0", "60.0", "50.0", "60.0", "75.0"
    ]
    extra_row = next(line for line in text.splitlines() if "mean (4 extra)" in line)
    assert [c.strip() for c in extra_row.strip("|").split("|")] == [
        "mean (4 extra)", "76.0", "72.0", "-", "74.0", "92.5"
    ]
    main_table = text.split("Per-class")[0]
    assert "src_c_fog_1" not in main_table


def test_setup_cfg_registers_corrupted_test_domains_early(tiny_dataset):
    from vlt_common.engine import setup_cfg

    opts = ["DATASETS.TEST", "('corr_tiny_c_zoom_blur_2',)"]
    args = argparse.Namespace(config_file="", opts=opts)
    setup_cfg(args, log=False)
    assert MetadataCatalog.get("corr_tiny_c_zoom_blur_2").severity == 2
    args.opts = ["DATASETS.TEST", "('corr_tiny', 'corr_tiny_c_haze_2')"]
    with pytest.raises(ValueError, match="corr_tiny_c_haze_2: unknown corruption 'haze'"):
        setup_cfg(args, log=False)


class _RedModel(torch.nn.Module):
    """Predicts class 1 where the red channel is above 127, else class 0 (RGB input)."""

    def forward(self, inputs):
        outputs = []
        for inp in inputs:
            red = inp["image"][0] > 127
            scores = torch.nn.functional.one_hot(red.long(), 19).permute(2, 0, 1).float()
            outputs.append({"sem_seg": scores})
        return outputs


def test_one_eval_pass_reports_corrupted_domains_grouped(tiny_dataset, tmp_path):
    from vlt_common.engine import VLTTrainer, get_vlt_cfg

    cfg = get_vlt_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "semantic_dg"
    cfg.INPUT.RESIZE_TEST = (0, 0)
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.DG.NUM_VIS = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    corrupted = [f"corr_tiny_c_{c}_{s}" for c in ("brightness", "contrast") for s in (1, 5)]
    cfg.DATASETS.TEST = ["corr_tiny"] + corrupted
    results = VLTTrainer.test(cfg, _RedModel())
    with open(tmp_path / "dg_report.json") as f:
        report = json.load(f)
    assert report["targets"] == [] and report["corrupted"] == corrupted
    grouped = report["tasks"]["sem_seg"]["corruptions"]["corr_tiny"]
    clean = results["corr_tiny"]["sem_seg"]["mIoU"]
    for corruption in ("brightness", "contrast"):
        row = grouped["corruptions"][corruption]
        values = [results[f"corr_tiny_c_{corruption}_{s}"]["sem_seg"]["mIoU"] for s in (1, 5)]
        assert row["severities"] == {"1": values[0], "5": values[1]}
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["rPD"] == pytest.approx(100 * np.mean(values) / clean)
    # brightness lifts red above 127 and contrast pulls it towards the mean: both change the map
    assert results["corr_tiny_c_brightness_5"]["sem_seg"]["mIoU"] != clean
    assert results["corr_tiny_c_contrast_5"]["sem_seg"]["mIoU"] != clean
