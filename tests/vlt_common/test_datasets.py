"""Registration of every real-dataset name on tiny fake trees in each official layout."""
import os
import pathlib

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vlt_common.data.datasets import (
    DET_SPLITS,
    SEM_SEG_SPLITS,
    SemSegPart,
    datasets_root,
    register_dg_coco,
    register_dg_sem_seg,
)
from vlt_common.data.datasets.builtin_meta import CITYSCAPES_19_CLASSES, THING_CLASSES
from vlt_common.data.datasets.coco import register_all_dg_detection
from vlt_common.data.datasets.sem_seg import register_all_dg_sem_seg
from vlt_common.data.io import read_image, read_sem_seg
from vlt_common.utils.atomic import write_json, write_png

SAMPLE = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/cityscapes_sample"
CONDITIONS = ("fog", "night", "rain", "snow")
IMAGE_SUFFIXES = ("_leftImg8bit.png", "_rgb_anon.png", ".png", ".jpg")


def _reregister(root):
    for name in list(SEM_SEG_SPLITS) + list(DET_SPLITS):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_all_dg_sem_seg(root)
    register_all_dg_detection(root)


@pytest.fixture
def registered_at(tmp_path):
    """The real names, registered under ``tmp_path`` for one test (restored afterwards)."""
    _reregister(str(tmp_path))
    yield tmp_path
    _reregister(datasets_root())


def _image(path, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    if str(path).endswith(".jpg"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rgb).save(path)
    else:
        write_png(str(path), rgb)


def _label(path):
    write_png(str(path), (np.arange(8 * 16).reshape(8, 16) % 19).astype(np.uint8))


def _pair(root, image_rel, label_rel):
    _image(root / image_rel)
    if label_rel:
        _label(root / label_rel)


def build_trees(root):
    """Two images (with train-id labels where public) per split of every dataset."""
    for i in (1, 2):
        _pair(root, f"gta5/images/{i:05d}.png", f"gta5/labels/{i:05d}_labelTrainIds.png")
        # The official id map next to it must not be taken for an image's label.
        _label(root / f"gta5/labels/{i:05d}.png")
        _pair(root, f"synthia/RGB/{i:07d}.png", f"synthia/GT/LABELS/{i:07d}_labelTrainIds.png")
    # GTA5's official split, 1-based image numbers as column vectors (image 3 is not there).
    scipy.io.savemat(root / "gta5/split.mat", {
        "trainIds": np.array([[1]]), "valIds": np.array([[2]]), "testIds": np.array([[2], [3]])
    })
    for i in (1, 2):
        for split in ("train", "val", "test"):
            stem = f"{split}city/{split}city_00000{i}_000019"
            label = f"cityscapes/gtFine/{split}/{stem}_gtFine_labelTrainIds.png"
            _pair(root, f"cityscapes/leftImg8bit/{split}/{stem}_leftImg8bit.png",
                  label if split != "test" else None)
            for cond in CONDITIONS:
                stem = f"GOPR{cond}{i}/GOPR{cond}{i}_frame_00000{i}"
                label = f"acdc/gt/{cond}/{split}/{stem}_gt_labelTrainIds.png"
                _pair(root, f"acdc/rgb_anon/{cond}/{split}/{stem}_rgb_anon.png",
                      label if split != "test" else None)
        for split in ("train", "val"):
            _pair(root, f"bdd100k/images/10k/{split}/{split}{i}.jpg",
                  f"bdd100k/labels/sem_seg/masks/{split}/{split}{i}.png")
        for folder in ("training", "validation"):
            _pair(root, f"mapillary_vistas/{folder}/images/{folder}{i}.jpg",
                  f"mapillary_vistas/{folder}/labels/{folder}{i}_labelTrainIds.png")


def test_every_semantic_name_is_registered_with_metadata():
    expected = {"gta5_train", "gta5_split_train", "gta5_val", "gta5_split_test", "synthia_train",
                "bdd100k_train", "bdd100k_val", "mapillary_train",
                "mapillary_val"}
    expected |= {f"cityscapes_{s}" for s in ("train", "val", "test")}
    expected |= {f"acdc_{s}" for s in ("train", "val", "test")}
    expected |= {f"acdc_{c}_{s}" for c in CONDITIONS for s in ("train", "val", "test")}
    assert set(SEM_SEG_SPLITS) == expected
    for name in expected:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == CITYSCAPES_19_CLASSES and len(meta.stuff_colors) == 19
        assert meta.ignore_label == 255 and meta.evaluator_type == "dg_sem_seg"
        assert meta.image_root.startswith(datasets_root())
        public_labels = name == "gta5_split_test" or not name.endswith("_test")
        assert hasattr(meta, "sem_seg_root") == public_labels


def test_every_detection_name_is_registered_with_metadata():
    expected = {f"{d}_det_{s}" for d in ("cityscapes", "bdd100k", "acdc") for s in ("train", "val")}
    expected |= {f"acdc_det_{c}_{s}" for c in CONDITIONS for s in ("train", "val")}
    assert set(DET_SPLITS) == expected
    for name in expected:
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == THING_CLASSES and meta.evaluator_type == "coco"
        assert meta.json_file.endswith(".json") and meta.image_root.startswith(datasets_root())


def test_dataset_dicts_of_every_name(registered_at):
    build_trees(registered_at)
    for name in SEM_SEG_SPLITS:
        dicts = DatasetCatalog.get(name)
        expected_len = 8 if name in ("acdc_train", "acdc_val", "acdc_test") else 2
        expected_len = 1 if name in ("gta5_split_train", "gta5_val", "gta5_split_test") else (
            expected_len)
        assert len(dicts) == expected_len, name
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and d["file_name"].startswith(str(registered_at))
            base = os.path.basename(d["file_name"])
            suffix = next(s for s in IMAGE_SUFFIXES if base.endswith(s))
            assert d["image_id"] == base[: -len(suffix)]
            if name.endswith("_test") and not name.startswith("gta5"):
                assert set(d) == {"file_name", "image_id"}
            else:
                assert set(d) == {"file_name", "image_id", "sem_seg_file_name"}
                labels = read_sem_seg(d["sem_seg_file_name"], 19, expected_hw=(8, 16))
                assert labels.max() == 18
    gta = DatasetCatalog.get("gta5_train")
    assert [d["image_id"] for d in gta] == ["00001", "00002"]
    assert gta[0]["sem_seg_file_name"].endswith("gta5/labels/00001_labelTrainIds.png")
    cs = DatasetCatalog.get("cityscapes_val")[0]
    assert cs["file_name"].endswith("leftImg8bit/val/valcity/valcity_000001_000019_leftImg8bit.png")
    assert cs["sem_seg_file_name"].endswith(
        "gtFine/val/valcity/valcity_000001_000019_gtFine_labelTrainIds.png")
    fog = {d["file_name"] for d in DatasetCatalog.get("acdc_fog_val")}
    assert fog < {d["file_name"] for d in DatasetCatalog.get("acdc_val")}
    assert MetadataCatalog.get("acdc_val").image_root == str(registered_at / "acdc/rgb_anon")


def test_registration_reads_nothing(tmp_path, monkeypatch):
    def no_io(*args, **kwargs):
        raise AssertionError("registration touched the file system")

    with monkeypatch.context() as patch:
        for name in ("walk", "listdir", "scandir", "stat"):
            patch.setattr(os, name, no_io)
        patch.setattr(os.path, "isdir", no_io)
        patch.setattr(os.path, "exists", no_io)
        patch.setattr("builtins.open", no_io)
        _reregister(str(tmp_path / "nowhere"))
    # The error comes when the dicts are asked for.
    try:
        with pytest.raises(FileNotFoundError, match="nowhere/gta5/images"):
            DatasetCatalog.get("gta5_train")
    finally:
        _reregister(datasets_root())


def test_missing_folder_names_path_and_prints_layout(registered_at):
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("cityscapes_train")
    message = str(info.value)
    assert str(registered_at / "cityscapes/leftImg8bit/train") in message
    assert "leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png" in message
    assert "prepare_dg_datasets.py cityscapes" in message
    with pytest.raises(FileNotFoundError, match="mapillary_vistas/training/images"):
        DatasetCatalog.get("mapillary_train")


def test_missing_labels_are_reported(registered_at):
    build_trees(registered_at)
    os.remove(registered_at / "gta5/labels/00002_labelTrainIds.png")
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images .*00002_labelTrainIds\.png"):
        DatasetCatalog.get("gta5_train")
    empty = registered_at / "bdd100k/images/10k/train"
    for f in os.listdir(empty):
        os.remove(empty / f)
    with pytest.raises(FileNotFoundError, match=r"no images '\*\.jpg' under .*10k/train"):
        DatasetCatalog.get("bdd100k_train")


def test_duplicate_image_ids_are_an_error(registered_at):
    build_trees(registered_at)
    _pair(registered_at, "acdc/rgb_anon/rain/val/other/GOPRfog1_frame_000001_rgb_anon.png",
          "acdc/gt/rain/val/other/GOPRfog1_frame_000001_gt_labelTrainIds.png")
    with pytest.raises(ValueError, match="GOPRfog1_frame_000001"):
        DatasetCatalog.get("acdc_val")


def test_user_sem_seg_dataset(tmp_path):
    for i in (1, 2):
        _pair(tmp_path, f"imgs/a/{i}.jpg", f"labs/a/{i}_trainIds.png")
    part = SemSegPart(str(tmp_path / "imgs"), ".jpg", str(tmp_path / "labs"), "_trainIds.png")
    register_dg_sem_seg("test_user_city", [part])
    try:
        meta = MetadataCatalog.get("test_user_city")
        assert meta.evaluator_type == "dg_sem_seg" and meta.sem_seg_root == str(tmp_path / "labs")
        dicts = DatasetCatalog.get("test_user_city")
        assert [(d["image_id"], os.path.basename(d["sem_seg_file_name"])) for d in dicts] == [
            ("1", "1_trainIds.png"), ("2", "2_trainIds.png")
        ]
        os.remove(tmp_path / "labs/a/2_trainIds.png")
        with pytest.raises(FileNotFoundError, match=r"1 of 2 images .*2_trainIds\.png\)\.$"):
            DatasetCatalog.get("test_user_city")
    finally:
        DatasetCatalog.remove("test_user_city")
        MetadataCatalog.remove("test_user_city")


def _user_coco(path, categories, annotations):
    write_json(str(path), {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 16}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": [1, 1, 4, 3], "area": 12,
             "iscrowd": 0}
            for i, c in enumerate(annotations)
        ],
        "categories": categories,
    })


def test_user_coco_is_matched_to_the_8_classes_by_name(tmp_path):
    _image(tmp_path / "images/a.png")
    categories = [{"id": 7, "name": "Car"}, {"id": 3, "name": "pedestrian"},
                  {"id": 9, "name": "traffic light"}]
    _user_coco(tmp_path / "sim.json", categories, [7, 9, 3, 7])
    register_dg_coco("test_user_sim", str(tmp_path / "sim.json"), str(tmp_path / "images"))
    try:
        meta = MetadataCatalog.get("test_user_sim")
        assert meta.thing_classes == THING_CLASSES and meta.evaluator_type == "coco"
        dicts = DatasetCatalog.get("test_user_sim")
        assert len(dicts) == 1 and dicts[0]["file_name"] == str(tmp_path / "images/a.png")
        # car -> index 2, pedestrian -> person (0); the traffic light is dropped.
        assert [a["category_id"] for a in dicts[0]["annotations"]] == [2, 0, 2]
        assert meta.thing_dataset_id_to_contiguous_id == {7: 2, 3: 0}
    finally:
        DatasetCatalog.remove("test_user_sim")
        MetadataCatalog.remove("test_user_sim")


def test_coco_errors(tmp_path, registered_at):
    _user_coco(tmp_path / "signs.json", [{"id": 1, "name": "traffic sign"}], [1])
    register_dg_coco("test_user_signs", str(tmp_path / "signs.json"), str(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"signs\.json.*traffic sign"):
            DatasetCatalog.get("test_user_signs")
    finally:
        DatasetCatalog.remove("test_user_signs")
        MetadataCatalog.remove("test_user_signs")
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("bdd100k_det_val")
    assert str(registered_at / "bdd100k/coco/instances_val.json") in str(info.value)
    assert "convert_to_coco.py bdd100k" in str(info.value)
    (registered_at / "bad.json").write_text("{not json")
    register_dg_coco("test_bad_json", str(registered_at / "bad.json"), str(registered_at))
    try:
        with pytest.raises(ValueError, match=r"bad\.json is not valid json"):
            DatasetCatalog.get("test_bad_json")
    finally:
        DatasetCatalog.remove("test_bad_json")
        MetadataCatalog.remove("test_bad_json")


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Cityscapes sample not present")
def test_real_cityscapes_frame_through_registration(registered_at):
    stem = "frankfurt/frankfurt_000000_000294"
    image = registered_at / f"cityscapes/leftImg8bit/val/{stem}_leftImg8bit.png"
    label = registered_at / f"cityscapes/gtFine/val/{stem}_gtFine_labelTrainIds.png"
    for link, target in ((image, "frankfurt_leftImg8bit.png"),
                         (label, "frankfurt_gtFine_labelTrainIds.png")):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(SAMPLE / target)
    (d,) = DatasetCatalog.get("cityscapes_val")
    assert d["image_id"] == "frankfurt_000000_000294"
    pixels = read_image(d["file_name"], "BGR")
    labels = read_sem_seg(d["sem_seg_file_name"], 19, expected_hw=pixels.shape[:2])
    assert pixels.shape == (1024, 2048, 3) and labels.shape == (1024, 2048)
    assert np.count_nonzero(labels == 0) > 100_000  # plenty of road


def test_label_spaces_import_registers_nothing():
    """The class tables a model reads (VLTSeg's default class names) come without the data stack:
    importing them registers no dataset and imports neither vlt_common.data nor detectron2.data."""
    import subprocess
    import sys

    code = (
        "import sys; from vlt_common.label_spaces import CITYSCAPES_19_CLASSES as c; "
        "assert len(c) == 19 and c[13] == 'car'; "
        "print(sorted(m for m in sys.modules if m.startswith(('vlt_common.data', "
        "'detectron2.data'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "[]"


def test_gta5_official_split(registered_at, caplog):
    """gta5_val holds the images of split.mat's valIds; a missing split.mat is a clear error."""
    build_trees(registered_at)
    assert [d["image_id"] for d in DatasetCatalog.get("gta5_val")] == ["00002"]
    assert [d["image_id"] for d in DatasetCatalog.get("gta5_split_train")] == ["00001"]
    with caplog.at_level("WARNING"):
        assert [d["image_id"] for d in DatasetCatalog.get("gta5_split_test")] == ["00002"]
    assert any("1 of the 2 images of testIds" in r.getMessage() for r in caplog.records)
    assert len(DatasetCatalog.get("gta5_train")) == 2  # the DG protocol trains on all images
    os.remove(registered_at / "gta5/split.mat")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("gta5_val")
    assert f"split file {registered_at}/gta5/split.mat does not exist" in str(e.value)
    assert "split.mat                  the official train/val/test split" in str(e.value)


def test_every_builtin_name_has_its_domain():
    """The DG report names domains from metadata: every built-in dataset has one, and the ACDC
    condition sets are their conditions (not "acdc_fog_val")."""
    expected = {"gta5_val": "GTA5", "synthia_train": "SYNTHIA", "cityscapes_val": "Cityscapes",
                "bdd100k_val": "BDD100K", "mapillary_val": "Mapillary", "acdc_val": "ACDC",
                "cityscapes_det_val": "Cityscapes", "bdd100k_det_val": "BDD100K",
                "acdc_det_val": "ACDC"}
    for cond in CONDITIONS:
        expected[f"acdc_{cond}_val"] = expected[f"acdc_det_{cond}_train"] = cond
    for name, domain in expected.items():
        assert MetadataCatalog.get(name).domain == domain, name
    for name in list(SEM_SEG_SPLITS) + list(DET_SPLITS):
        assert MetadataCatalog.get(name).domain, name
