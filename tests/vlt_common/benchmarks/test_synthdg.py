"""SynthDG: determinism, label/instance agreement, domains, atomic and concurrent generation,
registration and the CLI. Everything runs on tiny copies (64x128, a few scenes) in tmp_path."""
import glob
import json
import multiprocessing
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.structures import BoxMode
from PIL import Image

from vlt_common.benchmarks.synthdg import (
    DOMAINS,
    SynthDGSpec,
    ensure_synthdg,
    register_synthdg,
    synthdg_dir,
    synthesize_scene,
)
from vlt_common.benchmarks.synthdg import generate as generate_module
from vlt_common.benchmarks.synthdg.__main__ import main as cli_main
from vlt_common.benchmarks.synthdg.layout import make_layout
from vlt_common.benchmarks.synthdg.scene import scene_rng
from vlt_common.data.datasets.builtin_meta import (
    CITYSCAPES_19_CLASSES,
    IGNORE_LABEL,
    THING_CLASSES,
    THING_TRAIN_IDS,
)

TINY = SynthDGSpec(seed=3, height=64, width=128, num_train=3, num_val=2)


def _files(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthdg_root"))
    ensure_synthdg(root, TINY, num_workers=1)
    return root


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tiny_root, tmp_path):
    again = str(tmp_path / "again")
    # Two processes: scene seeding must not depend on which worker renders which scene.
    ensure_synthdg(again, TINY, num_workers=2)
    first, second = _files(synthdg_dir(tiny_root)), _files(synthdg_dir(again))
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".jpg")]) == 3 + 2 * len(DOMAINS)
    assert all(first[k] == second[k] for k in first)

    other = str(tmp_path / "other")
    ensure_synthdg(other, SynthDGSpec(seed=4, height=64, width=128, num_train=3, num_val=2), 1)
    third = _files(synthdg_dir(other))
    images = [k for k in first if k.endswith((".jpg", ".png"))]
    assert sum(first[k] != third[k] for k in images) == len(images)


@pytest.mark.parametrize("index", range(6))
def test_instances_agree_with_labels_and_boxes_are_tight(index):
    spec = SynthDGSpec(seed=11, height=128, width=256)
    scene = synthesize_scene(spec, "train", index, ["source"])
    label = scene.label
    assert label.dtype == np.uint8 and label.shape == (128, 256)
    assert label.max() < len(CITYSCAPES_19_CLASSES)  # every pixel has a class, none ignored
    assert scene.annotations, "every scene has some visible things"
    covered = np.zeros(label.shape, bool)
    for ann in scene.annotations:
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert not (mask & covered).any(), "instance masks overlap"
        covered |= mask
        assert ann["area"] == mask.sum() > 0
        assert np.all(label[mask] == THING_TRAIN_IDS[ann["category_id"]])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # Thing pixels outside annotated instances belong to instances too small to annotate.
    layout = make_layout(scene_rng(spec.seed, "train", index, 0), spec.height, spec.width)
    np.testing.assert_array_equal(layout.label, label)
    is_thing = np.isin(label, THING_TRAIN_IDS)
    np.testing.assert_array_equal(layout.instance_map >= 0, is_thing)
    assert covered.sum() >= 0.9 * is_thing.sum()


def test_all_classes_occur_over_a_few_scenes():
    spec = SynthDGSpec(seed=0, height=128, width=256)
    seen = np.zeros(len(CITYSCAPES_19_CLASSES), bool)
    for index in range(40):
        layout = make_layout(scene_rng(spec.seed, "train", index, 0), spec.height, spec.width)
        seen[np.unique(layout.label)] = True
    missing = [c for c, s in zip(CITYSCAPES_19_CLASSES, seen) if not s]
    assert not missing


def test_shifted_styles_really_differ():
    spec = SynthDGSpec(seed=5, height=128, width=256)
    stats = {d: [] for d in DOMAINS}
    road_colour = {"source": [], "palette": []}
    for index in range(3):
        scene = synthesize_scene(spec, "val", index, DOMAINS)
        road = scene.label == CITYSCAPES_19_CLASSES.index("road")
        for domain, image in scene.images.items():
            grey = image.astype(np.float32).mean(axis=2)
            # Local contrast: mean absolute difference of neighbouring pixels.
            edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
            stats[domain].append((grey.mean(), grey.std(), edges))
        for domain in road_colour:
            road_colour[domain].append(scene.images[domain][road].mean(axis=0))
    mean = {d: np.mean([s[0] for s in v]) for d, v in stats.items()}
    std = {d: np.mean([s[1] for s in v]) for d, v in stats.items()}
    edges = {d: np.mean([s[2] for s in v]) for d, v in stats.items()}
    assert mean["night"] < 0.5 * mean["source"]
    assert edges["fog"] < 0.6 * edges["source"] and mean["fog"] > mean["source"] + 40
    assert mean["rain"] < 0.85 * mean["source"]
    assert mean["snow"] > mean["source"] + 30 and std["snow"] < std["source"]
    road_shift = np.abs(np.mean(road_colour["palette"], 0) - np.mean(road_colour["source"], 0))
    assert road_shift.max() > 40


def test_every_domain_shares_the_label_map_and_images_differ(tiny_root):
    names = register_synthdg(tiny_root, TINY, prefix="synthdg_t_share")
    by_domain = {d: DatasetCatalog.get(f"synthdg_t_share_{d}_val") for d in DOMAINS}
    for k in range(TINY.num_val):
        labels = {by_domain[d][k]["sem_seg_file_name"] for d in DOMAINS}
        assert len(labels) == 1
        images = [np.asarray(Image.open(by_domain[d][k]["file_name"])) for d in DOMAINS]
        for a in range(len(images)):
            for b in range(a + 1, len(images)):
                assert np.abs(images[a].astype(int) - images[b]).mean() > 5
    assert "synthdg_t_share_det_snow_val" in names


def test_registration_names_metadata_and_dicts(tiny_root):
    names = register_synthdg(tiny_root, TINY, prefix="synthdg_t_reg")
    expected = {f"synthdg_t_reg_{d}_val" for d in DOMAINS} | {"synthdg_t_reg_source_train"}
    expected |= {n.replace("synthdg_t_reg_", "synthdg_t_reg_det_") for n in expected}
    assert set(names) == expected
    meta = MetadataCatalog.get("synthdg_t_reg_fog_val")
    assert meta.evaluator_type == "dg_sem_seg" and meta.domain == "fog"
    assert meta.stuff_classes == CITYSCAPES_19_CLASSES and meta.ignore_label == IGNORE_LABEL
    assert len(meta.stuff_colors) == 19
    det_meta = MetadataCatalog.get("synthdg_t_reg_det_source_train")
    assert det_meta.evaluator_type == "coco" and det_meta.domain == "source"
    assert det_meta.thing_classes == THING_CLASSES and len(det_meta.thing_colors) == 8

    sem = DatasetCatalog.get("synthdg_t_reg_night_val")
    assert [d["image_id"] for d in sem] == [0, 1]
    assert set(sem[0]) == {"file_name", "sem_seg_file_name", "height", "width", "image_id"}
    assert os.path.isfile(sem[0]["file_name"]) and "night" in sem[0]["file_name"]
    assert np.asarray(Image.open(sem[0]["sem_seg_file_name"])).shape == (64, 128)

    det = DatasetCatalog.get("synthdg_t_reg_det_source_train")
    assert len(det) == 3 and "sem_seg_file_name" not in det[0]
    anns = [a for d in det for a in d["annotations"]]
    assert anns and all(a["bbox_mode"] == BoxMode.XYXY_ABS and a["iscrowd"] == 0 for a in anns)
    assert all(0 <= a["category_id"] < 8 for a in anns)
    # Detectron2 turns them into instances with bitmask masks.
    record = next(d for d in det if d["annotations"])
    inst = annotations_to_instances(record["annotations"], (64, 128), mask_format="bitmask")
    assert inst.gt_masks.tensor.shape == (len(record["annotations"]), 64, 128)
    box_area = inst.gt_boxes.area()
    assert (inst.gt_masks.tensor.flatten(1).sum(1) <= box_area).all()


def test_default_names_are_registered_without_generating():
    from vlt_common.benchmarks.synthdg.builtin import SYNTHDG_DATASETS

    for name in ("synthdg_source_train", "synthdg_palette_val", "synthdg_det_snow_val"):
        assert name in DatasetCatalog.list()
        assert name in SYNTHDG_DATASETS
    assert MetadataCatalog.get("synthdg_det_night_val").domain == "night"
    assert "synthdg_fog_train" not in DatasetCatalog.list()  # only the source trains


def test_missing_domain_and_spec_mismatch_errors(tiny_root):
    from vlt_common.benchmarks.synthdg import load_synthdg

    with pytest.raises(KeyError, match="no 'train' images for domain 'fog'"):
        load_synthdg(tiny_root, "fog", "train", spec=TINY)
    with pytest.raises(RuntimeError, match="generated from spec"):
        ensure_synthdg(tiny_root, SynthDGSpec(seed=99, height=64, width=128, num_train=3))


def test_interrupted_generation_leaves_nothing_and_reruns(tmp_path, monkeypatch):
    root = str(tmp_path)
    stale = tmp_path / ".synthdg-tmp-killed"
    stale.mkdir()
    calls = []
    real = generate_module.synthesize_scene

    def crash_on_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(generate_module, "synthesize_scene", crash_on_third)
    spec = SynthDGSpec(seed=1, height=64, width=128, num_train=2, num_val=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_synthdg(root, spec, num_workers=1)
    assert sorted(os.listdir(root)) == [".synthdg.lock"]  # no copy, no temp folder left
    monkeypatch.setattr(generate_module, "synthesize_scene", real)
    directory = ensure_synthdg(root, spec, num_workers=1)
    with open(os.path.join(directory, "manifest.json")) as f:
        assert len(json.load(f)["splits"]["val"]["scenes"]) == 2


def _generate_and_list(root, queue):
    spec = SynthDGSpec(seed=2, height=64, width=128, num_train=4, num_val=2)
    directory = ensure_synthdg(root, spec, num_workers=1)
    files = sorted(glob.glob(os.path.join(directory, "**", "*.*"), recursive=True))
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = f.read()
    queue.put((len(files), manifest))


def test_concurrent_callers_both_see_one_complete_copy(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate_and_list, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    # Without the lock both would generate and the second rename onto a full folder would fail.
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # 4 train + 2x6 val images, 6 label maps, the manifest.
    assert results[0] == results[1] and results[0][0] == 4 + 12 + 6 + 1
    assert sorted(os.listdir(tmp_path)) == [".synthdg.lock", "synthdg"]


def test_cli_writes_preview_grid(tmp_path, capsys):
    out = tmp_path / "preview.png"
    cli_main(["--root", str(tmp_path / "data"), "--preview", str(out), "--height", "64",
              "--width", "128", "--num-train", "1", "--num-val", "2", "--scene", "1",
              "--workers", "1"])
    grid = Image.open(out)
    assert grid.size == (4 * 128, 2 * 64)  # 6 domains + the label map, 4 per row
    assert "Preview written" in capsys.readouterr().out
    with pytest.raises(ValueError, match="outside the 2 validation scenes"):
        cli_main(["--root", str(tmp_path / "data"), "--preview", str(out), "--height", "64",
                  "--width", "128", "--num-train", "1", "--num-val", "2", "--scene", "5"])
