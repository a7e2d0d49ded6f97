"""Safe image and label reading: values, shapes, and errors that name the file."""
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from vlt_common.data.io import read_image, read_label_ids, read_sem_seg
from vlt_common.utils.atomic import write_png

# The real Cityscapes frame lives beside the repository (CI clones it with shared/ next to it).
SAMPLE = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/cityscapes_sample"


def test_read_image_rgb_bgr_and_gray(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    write_png(str(tmp_path / "a.png"), pixels)
    rgb = read_image(str(tmp_path / "a.png"), "RGB")
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, pixels)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png"), "BGR"), pixels[:, :, ::-1])
    assert read_image(str(tmp_path / "a.png"), "L").shape == (8, 16, 1)


@pytest.mark.parametrize("content", [None, b"not an image at all", b"\x89PNG\r\n\x1a\nbroken"])
def test_read_image_unreadable_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.png"):
        read_image(str(path), "RGB")


def test_read_image_truncated_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    write_png(str(path), np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        read_image(str(path), "RGB")


def test_read_sem_seg_keeps_valid_ids(tmp_path, caplog):
    labels = np.arange(8 * 16).reshape(8, 16) % 19
    labels[0, :3] = 255
    write_png(str(tmp_path / "l.png"), labels.astype(np.uint8))
    with caplog.at_level(logging.WARNING):
        out = read_sem_seg(str(tmp_path / "l.png"), num_classes=19, expected_hw=(8, 16))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    assert not caplog.records


def test_read_sem_seg_out_of_range_becomes_ignore_with_warning(tmp_path, caplog):
    labels = np.zeros((8, 16), np.uint8)
    labels[0, :5] = 19
    labels[1, :2] = 200
    labels[2, :1] = 255
    path = tmp_path / "bad_ids.png"
    write_png(str(path), labels)
    with caplog.at_level(logging.WARNING):
        out = read_sem_seg(str(path), num_classes=19)
    assert (out[0, :5] == 255).all() and (out[1, :2] == 255).all() and out[2, 0] == 255
    assert (out[3:] == 0).all()
    message = caplog.records[-1].getMessage()
    assert "bad_ids.png" in message and "7 pixels" in message and "[19, 200]" in message


def test_read_sem_seg_palette_png_reads_indices(tmp_path):
    labels = np.tile(np.arange(16, dtype=np.uint8) % 19, (8, 1))
    img = Image.fromarray(labels, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_sem_seg(str(tmp_path / "p.png"), 19), labels)


def test_read_sem_seg_size_mismatch_names_both(tmp_path):
    write_png(str(tmp_path / "lab.png"), np.zeros((8, 16), np.uint8))
    with pytest.raises(ValueError, match=r"lab\.png.*\(8, 16\).*img\.png.*\(8, 15\)"):
        read_sem_seg(str(tmp_path / "lab.png"), 19, expected_hw=(8, 15), image_file="img.png")


def test_read_sem_seg_rejects_colour_and_missing_files(tmp_path):
    write_png(str(tmp_path / "colour.png"), np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"colour\.png.*'RGB'"):
        read_sem_seg(str(tmp_path / "colour.png"), 19)
    with pytest.raises(ValueError, match=r"missing\.png: no such file"):
        read_sem_seg(str(tmp_path / "missing.png"), 19)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.png"):
        read_label_ids(str(tmp_path / "junk.png"))


def test_read_sem_seg_16bit_labels_and_wide_label_spaces(tmp_path):
    labels = np.array([[0, 300, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(labels).save(tmp_path / "wide.png")
    out = read_sem_seg(str(tmp_path / "wide.png"), num_classes=1001, ignore_label=65535)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 300, 1000, 65535]])


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Cityscapes sample not present")
def test_real_cityscapes_frame():
    image = read_image(str(SAMPLE / "frankfurt_leftImg8bit.png"), "RGB")
    assert image.shape == (1024, 2048, 3) and image.dtype == np.uint8
    labels = read_sem_seg(
        str(SAMPLE / "frankfurt_gtFine_labelTrainIds.png"), 19, expected_hw=image.shape[:2]
    )
    assert labels.shape == (1024, 2048)
    values = set(np.unique(labels).tolist())
    assert values <= set(range(19)) | {255}
    # A street scene: road, building, vegetation, sky and cars are all there.
    assert {0, 2, 8, 10, 13} <= values
    # The lower image centre is road in a dashboard-camera frame (rows above the ego vehicle).
    assert np.mean(labels[700:800, 900:1100] == 0) > 0.5
