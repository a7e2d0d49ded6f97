"""The "semantic_dg" dataset mapper and its augmentations (vltseg.data)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine.defaults import get_vlt_cfg
from vltseg.data import (
    PhotometricDistortion,
    PhotometricDistortionTransform,
    RandomRescale,
    SemanticDGDatasetMapper,
)

IGNORE = 255
# VLTSeg's mapper name and crop (Detectron2's INPUT.CROP keys) are set by its base config.
BASE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Base-VLTSeg.yaml")


def _cfg(crop=(32, 48), scale=(1.0, 1.0), resize=(0, 0), color=False, flip="horizontal"):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(BASE_CONFIG)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.CROP.SIZE = crop
    cfg.INPUT.SCALE_RANGE_TRAIN = scale
    cfg.INPUT.RESIZE_TRAIN = resize
    cfg.INPUT.COLOR_AUG_SSD = color
    cfg.INPUT.RANDOM_FLIP = flip
    cfg.MODEL.PIXEL_MEAN = [122.7, 116.7, 104.1]
    return cfg


def _write(tmp_path, image, label, name="a"):
    img_file, seg_file = tmp_path / f"{name}.png", tmp_path / f"{name}_label.png"
    Image.fromarray(image).save(img_file)
    Image.fromarray(label.astype(np.uint8)).save(seg_file)
    return {"file_name": str(img_file), "sem_seg_file_name": str(seg_file)}


def _coded_sample(tmp_path, h=64, w=96):
    # The image encodes its label (R = 10 * label), so that geometric consistency can be checked.
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, size=(h, w))
    image = np.stack([label * 10, rng.integers(0, 255, (h, w)), np.full((h, w), 7)], -1)
    return _write(tmp_path, image.astype(np.uint8), label), label


def test_registered_and_built_from_config(tmp_path):
    mapper = build_dataset_mapper(_cfg(), True)
    assert isinstance(mapper, SemanticDGDatasetMapper)
    assert mapper.is_train


def test_train_output_crop_size_and_consistency(tmp_path):
    dataset_dict, _ = _coded_sample(tmp_path)
    mapper = SemanticDGDatasetMapper(_cfg(crop=(32, 48)), True)
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(dataset_dict)
        image, sem_seg = out["image"], out["sem_seg"]
        assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
        assert sem_seg.shape == (32, 48) and sem_seg.dtype == torch.int64
        # Crop and flip moved image and labels together.
        assert torch.equal(image[0].long(), sem_seg * 10)
        assert (image[2] == 7).all()
    assert "image" not in dataset_dict  # the input dict is not modified


def test_pads_to_crop_with_ignore_and_mean(tmp_path):
    dataset_dict, label = _coded_sample(tmp_path, h=20, w=30)
    out = SemanticDGDatasetMapper(_cfg(crop=(32, 48), flip="none"), True)(dataset_dict)
    assert out["image"].shape == (3, 32, 48)
    assert torch.equal(out["sem_seg"][:20, :30], torch.as_tensor(label, dtype=torch.int64))
    assert (out["sem_seg"][20:] == IGNORE).all() and (out["sem_seg"][:, 30:] == IGNORE).all()
    # Padded pixels carry the rounded pixel mean: zero after the model's normalization.
    assert out["image"][:, 25, 40].tolist() == [123, 117, 104]


def test_pads_to_size_divisibility(tmp_path):
    dataset_dict, _ = _coded_sample(tmp_path, h=30, w=45)
    cfg = _cfg(crop=(30, 45))
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    out = SemanticDGDatasetMapper(cfg, True)(dataset_dict)
    assert out["image"].shape == (3, 32, 64) and out["sem_seg"].shape == (32, 64)
    assert (out["sem_seg"][30:] == IGNORE).all()


def test_out_of_range_labels_become_ignore(tmp_path):
    label = np.zeros((32, 48), dtype=np.uint8)
    label[:, :10] = 40  # not a class of the 19
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    out = SemanticDGDatasetMapper(_cfg(), True)(_write(tmp_path, image, label))
    assert (out["sem_seg"] == IGNORE).sum() == 32 * 10


def _max_class_ratio(sem_seg):
    values, counts = np.unique(sem_seg[sem_seg != IGNORE], return_counts=True)
    return counts.max() / counts.sum()


def test_category_area_constraint(tmp_path):
    # Class 0 covers x < 48; stripes of classes 1 and 2 the rest. A 32-wide crop starting at
    # x <= 24 is >= 75% class 0; the mapper must redraw those crops.
    h, w = 32, 128
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, 48:] = 1 + (np.arange(48, w) // 4) % 2
    dataset_dict = _write(tmp_path, np.zeros((h, w, 3), dtype=np.uint8), label)

    constrained = SemanticDGDatasetMapper(_cfg(crop=(32, 32), flip="none"), True)
    cfg = _cfg(crop=(32, 32), flip="none")
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    free = SemanticDGDatasetMapper(cfg, True)
    np.random.seed(0)
    ratios = [_max_class_ratio(constrained(dataset_dict)["sem_seg"].numpy()) for _ in range(30)]
    assert max(ratios) < 0.75
    np.random.seed(0)
    free_ratios = [_max_class_ratio(free(dataset_dict)["sem_seg"].numpy()) for _ in range(30)]
    assert max(free_ratios) >= 0.75  # without the constraint such crops do occur


def test_resize_and_random_scale(tmp_path):
    dataset_dict, _ = _coded_sample(tmp_path, h=64, w=96)
    cfg = _cfg(resize=(192, 32), scale=(2.0, 2.0))
    cfg.INPUT.CROP.ENABLED = False
    out = SemanticDGDatasetMapper(cfg, True)(dataset_dict)
    # Fit into 32x192 keeping the ratio -> 32x48, then x2 -> 64x96.
    assert out["image"].shape[-2:] == (64, 96) == out["sem_seg"].shape
    cfg = _cfg(scale=(0.5, 0.5))
    cfg.INPUT.CROP.ENABLED = False
    out = SemanticDGDatasetMapper(cfg, True)(dataset_dict)
    assert out["image"].shape[-2:] == (32, 48)


def test_test_mode_resizes_and_keeps_original_size(tmp_path):
    dataset_dict, _ = _coded_sample(tmp_path, h=64, w=96)
    cfg = _cfg()
    cfg.INPUT.RESIZE_TEST = (48, 48)
    out = SemanticDGDatasetMapper(cfg, False)(dataset_dict)
    assert out["image"].shape == (3, 32, 48)
    assert (out["height"], out["width"]) == (64, 96)
    assert "sem_seg" not in out
    cfg.INPUT.RESIZE_TEST = (0, 0)
    out = SemanticDGDatasetMapper(cfg, False)(dataset_dict)
    assert out["image"].shape == (3, 64, 96)


def test_training_needs_a_label_file(tmp_path):
    dataset_dict, _ = _coded_sample(tmp_path)
    del dataset_dict["sem_seg_file_name"]
    with pytest.raises(KeyError, match="a.png.*sem_seg_file_name"):
        SemanticDGDatasetMapper(_cfg(), True)(dataset_dict)


def test_label_size_mismatch_names_the_files(tmp_path):
    dataset_dict = _write(tmp_path, np.zeros((32, 48, 3), np.uint8), np.zeros((30, 48), np.uint8))
    with pytest.raises(ValueError, match="a_label.png"):
        SemanticDGDatasetMapper(_cfg(), True)(dataset_dict)


def test_random_rescale():
    aug = RandomRescale(0.5, 2.0)
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    for _ in range(10):
        tfm = aug.get_transform(image)
        out = tfm.apply_image(image)
        scale = out.shape[0] / 40
        assert 0.5 <= scale <= 2.0 and abs(out.shape[1] / 60 - scale) < 0.05
    with pytest.raises(ValueError):
        RandomRescale(2.0, 1.0)


def _photometric(**kwargs):
    params = dict(
        brightness_delta=None,
        contrast_alpha=None,
        contrast_first=True,
        saturation_alpha=None,
        hue_shift=None,
    )
    params.update(kwargs)
    return PhotometricDistortionTransform(**params)


def test_photometric_steps():
    image = np.array([[[200, 50, 50], [10, 20, 250]]], dtype=np.uint8)
    out = _photometric(brightness_delta=30.0).apply_image(image)
    np.testing.assert_array_equal(out, np.clip(image.astype(int) + 30, 0, 255))
    out = _photometric(contrast_alpha=1.5).apply_image(image)
    np.testing.assert_array_equal(out, np.clip(np.round(image * 1.5), 0, 255))
    grey = _photometric(saturation_alpha=0.0).apply_image(image)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # Half a turn of the hue makes red cyan-ish.
    red = np.array([[[220, 20, 20]]], dtype=np.uint8)
    cyan = _photometric(hue_shift=128).apply_image(red)[0, 0]
    assert cyan[0] < 60 and cyan[1] > 150 and cyan[2] > 150
    # BGR images are handled in their own channel order.
    bgr = _photometric(hue_shift=128, image_format="BGR").apply_image(red[..., ::-1].copy())
    np.testing.assert_array_equal(bgr[0, 0, ::-1], cyan)
    seg = np.arange(6).reshape(2, 3)
    assert _photometric(brightness_delta=10.0).apply_segmentation(seg) is seg


def test_photometric_augmentation_is_random_and_keeps_shape():
    np.random.seed(0)
    image = np.random.randint(0, 255, (16, 24, 3), dtype=np.uint8)
    aug = PhotometricDistortion()
    outs = [aug.get_transform(image).apply_image(image) for _ in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 6


def test_photometric_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        _photometric(brightness_delta=1.0).apply_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="RGB or BGR"):
        _photometric(image_format="HSV")
