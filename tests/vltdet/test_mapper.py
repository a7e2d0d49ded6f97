"""The "detection_lsj" mapper: LSJ geometry, masks rasterized and cropped without shapely, tight
boxes from the cropped masks, box-only data, clear errors."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.structures import BitMasks, BoxMode
from PIL import Image

from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine.defaults import get_vlt_cfg
from vltdet.mapper import LSJDatasetMapper

HEIGHT, WIDTH = 64, 96


def _cfg(mask_on=True, image_size=64, scales=(1.0, 1.0), flip="none"):
    cfg = get_vlt_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "detection_lsj"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.RANDOM_FLIP = flip
    cfg.INPUT.LSJ.IMAGE_SIZE = image_size
    cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE = scales
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.MODEL.MASK_ON = mask_on
    return cfg


@pytest.fixture
def record(tmp_path):
    """One 64x96 image with a triangle (polygon) and a rectangle (RLE), boxes in XYWH."""
    path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    rect = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    rect[30:50, 60:90] = 1
    return {
        "file_name": str(path),
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 0,
        "annotations": [
            {
                "bbox": [6.0, 6.0, 36.0, 36.0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 2,
                "segmentation": [[6.0, 6.0, 42.0, 6.0, 6.0, 42.0]],
                "iscrowd": 0,
            },
            {
                "bbox": [60.0, 30.0, 30.0, 20.0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 5,
                "segmentation": mask_util.encode(rect),
                "iscrowd": 0,
            },
        ],
    }


def test_registered_and_scaled_geometry(record):
    # Scale 1 with a 64-pixel square: the 64x96 image is resized to fit, 43x64, and not cropped.
    mapper = build_dataset_mapper(_cfg(mask_on=False), is_train=True)
    assert isinstance(mapper, LSJDatasetMapper)
    out = mapper(record)
    assert out["image"].shape == (3, 43, 64) and out["image"].dtype == torch.uint8
    inst = out["instances"]
    assert not inst.has("gt_masks")
    assert inst.gt_classes.tolist() == [2, 5]
    sx, sy = 64 / WIDTH, 43 / HEIGHT
    expected = torch.tensor(
        [[6 * sx, 6 * sy, 42 * sx, 42 * sy], [60 * sx, 30 * sy, 90 * sx, 50 * sy]]
    )
    assert torch.allclose(inst.gt_boxes.tensor, expected, atol=1e-3)
    assert "annotations" in record, "the input dict must not be modified"


def test_crop_keeps_masks_and_tight_boxes(record):
    # Scale 2 makes the image 64x96 (fits a 128 square) and the 32-pixel crop cuts objects.
    torch.manual_seed(0)
    np.random.seed(1)
    cfg = _cfg(mask_on=True, image_size=32, scales=(2.0, 2.0), flip="horizontal")
    mapper = LSJDatasetMapper(cfg, is_train=True)
    seen_masks = 0
    for _ in range(6):
        out = mapper(record)
        assert out["image"].shape == (3, 32, 32)
        inst = out["instances"]
        assert isinstance(inst.gt_masks, BitMasks)
        assert inst.gt_masks.tensor.shape[1:] == (32, 32)
        assert len(inst) == len(inst.gt_masks) <= 2
        seen_masks += len(inst)
        # Boxes are recomputed from the cropped masks, so they are tight around them.
        assert torch.equal(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
        assert (inst.gt_masks.tensor.flatten(1).sum(1) > 0).all()
    assert seen_masks > 0


def test_masks_required_when_mask_on(record):
    for anno in record["annotations"]:
        anno.pop("segmentation")
    with pytest.raises(ValueError, match=r"img\.png.*MODEL\.MASK_ON False"):
        LSJDatasetMapper(_cfg(mask_on=True), is_train=True)(record)
    # Box-only training takes the same data.
    out = LSJDatasetMapper(_cfg(mask_on=False), is_train=True)(record)
    assert len(out["instances"]) == 2


def test_inference_resizes_shortest_edge(record):
    out = LSJDatasetMapper(_cfg(), is_train=False)(record)
    assert out["image"].shape == (3, 32, 48)
    assert "instances" not in out and "annotations" not in out
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)


def test_bad_scale_range():
    with pytest.raises(ValueError, match="INPUT.LSJ"):
        LSJDatasetMapper(_cfg(scales=(2.0, 1.0)), is_train=True)
