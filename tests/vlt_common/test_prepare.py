"""Label preparation: train-id contents, parallel runs, resumability and atomic writes."""
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.tool_loader import load_tool
from vlt_common.data.conversion import convert_label_maps, png_is_complete, write_png
from vlt_common.data.datasets import SEM_SEG_SPLITS, load_dg_sem_seg
from vlt_common.data.datasets.prepare import label_jobs, prepare_labels, read_synthia_label
from vlt_common.data.io import read_label_ids


def _palette_png(path, ids):
    """An 8-bit palette PNG, like GTA5's and Mapillary's official label files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, i // 2, 255 - i)])
    img.save(path)


def _png16_rgb(path, channels):
    """A 16-bit 3-channel PNG (SYNTHIA's GT/LABELS format), which PIL cannot write."""
    h, w, _ = channels.shape

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + channels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# Cityscapes / GTA5 ids -> train ids: road 7->0, car 26->13, unlabeled 0->255, parking 9->255,
# bicycle 33->18; 34 is not a Cityscapes id (unknown -> 255, counted).
CS_IDS = np.array([[7, 26, 0, 9], [33, 34, 7, 7]])
CS_TRAIN = np.array([[0, 13, 255, 255], [18, 255, 0, 0]])


def _gta5_tree(root, n=3):
    for i in range(1, n + 1):
        write_png(str(root / f"images/{i:05d}.png"), np.zeros((2, 4, 3), np.uint8))
        _palette_png(root / f"labels/{i:05d}.png", CS_IDS)
    return root


def _all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_gta5_contents_and_registration_pairing(tmp_path, caplog):
    root = _gta5_tree(tmp_path / "gta5")
    with caplog.at_level(logging.WARNING):
        summary = prepare_labels("gta5", str(root))
    assert (summary.written, summary.skipped) == (3, 0)
    for i in (1, 2, 3):
        out = read_label_ids(str(root / f"labels/{i:05d}_labelTrainIds.png"))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, CS_TRAIN)
    # The id 34 is outside GTA5's label space: counted per file and named in a warning.
    assert summary.unknown_ids == {str(root / f"labels/{i:05d}.png"): 1 for i in (1, 2, 3)}
    assert "00001.png (1 pixels)" in caplog.text
    (part,) = SEM_SEG_SPLITS["gta5_train"][1]
    dicts = load_dg_sem_seg([part.under(str(tmp_path))])
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == [
        f"{i:05d}_labelTrainIds.png" for i in (1, 2, 3)
    ]


def test_synthia_reads_the_16bit_class_channel(tmp_path):
    ids = np.array([[3, 4, 10, 0], [22, 21, 1, 8]])
    channels = np.stack([ids, np.full_like(ids, 300), np.zeros_like(ids)], axis=-1)
    _png16_rgb(tmp_path / "synthia/GT/LABELS/0000000.png", channels)
    source = tmp_path / "synthia/GT/LABELS/0000000.png"
    np.testing.assert_array_equal(read_synthia_label(str(source)), ids)
    summary = prepare_labels("synthia", str(tmp_path / "synthia"))
    assert summary.written == 1 and not summary.unknown_ids
    out = read_label_ids(str(tmp_path / "synthia/GT/LABELS/0000000_labelTrainIds.png"))
    # road, sidewalk, pedestrian->person, void | lanemarking (ignored), wall, sky, car
    np.testing.assert_array_equal(out, [[0, 1, 11, 255], [255, 3, 10, 13]])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    with pytest.raises(ValueError, match="broken.png"):
        read_synthia_label(str(tmp_path / "broken.png"))


def test_cityscapes_and_mapillary(tmp_path):
    cs = tmp_path / "cityscapes"
    for split in ("train", "val"):
        write_png(str(cs / f"gtFine/{split}/c/c_000000_000001_gtFine_labelIds.png"),
                  CS_IDS.astype(np.uint8))
    summary = prepare_labels("cityscapes", str(cs))
    assert summary.written == 2
    out = read_label_ids(str(cs / "gtFine/val/c/c_000000_000001_gtFine_labelTrainIds.png"))
    np.testing.assert_array_equal(out, CS_TRAIN)

    mv = tmp_path / "mapillary_vistas"
    # road, curb->sidewalk, bicyclist->rider, on-rails->train | unlabeled, sky, bird, truck
    ids = np.array([[13, 2, 20, 58], [65, 27, 0, 61]])
    for folder in ("training", "validation"):
        _palette_png(mv / f"{folder}/labels/x{folder}.png", ids)
    summary = prepare_labels("mapillary", str(mv))
    assert summary.written == 2 and not summary.unknown_ids
    out = read_label_ids(str(mv / "validation/labels/xvalidation_labelTrainIds.png"))
    np.testing.assert_array_equal(out, [[0, 1, 12, 16], [255, 10, 255, 14]])


def test_resumable_and_atomic(tmp_path, monkeypatch):
    root = _gta5_tree(tmp_path / "gta5", n=4)
    labels = root / "labels"
    # An output already there and complete is kept as is (not rewritten).
    kept = np.full((2, 4), 5, np.uint8)
    write_png(str(labels / "00001_labelTrainIds.png"), kept)
    mtime = os.stat(labels / "00001_labelTrainIds.png").st_mtime_ns
    # An output cut short by a non-atomic tool is redone.
    write_png(str(labels / "00002_labelTrainIds.png"), kept)
    data = (labels / "00002_labelTrainIds.png").read_bytes()
    (labels / "00002_labelTrainIds.png").write_bytes(data[:-20])
    assert not png_is_complete(str(labels / "00002_labelTrainIds.png"))

    # Interrupt the run at the 4th file: the earlier outputs are complete, nothing half-written.
    jobs = label_jobs("gta5", str(root))

    def failing_reader(path):
        if path.endswith("00004.png"):
            raise KeyboardInterrupt
        return read_label_ids(path)

    with pytest.raises(KeyboardInterrupt):
        convert_label_maps(jobs, failing_reader, {7: 0, 26: 13, 33: 18, 0: 255, 9: 255})
    assert not (labels / "00004_labelTrainIds.png").exists()
    assert png_is_complete(str(labels / "00003_labelTrainIds.png"))

    summary = prepare_labels("gta5", str(root))
    assert (summary.written, summary.skipped) == (1, 3)
    np.testing.assert_array_equal(read_label_ids(str(labels / "00001_labelTrainIds.png")), kept)
    assert os.stat(labels / "00001_labelTrainIds.png").st_mtime_ns == mtime
    for i in (2, 3, 4):
        np.testing.assert_array_equal(
            read_label_ids(str(labels / f"{i:05d}_labelTrainIds.png")), CS_TRAIN
        )
    summary = prepare_labels("gta5", str(root))
    assert (summary.written, summary.skipped) == (0, 4)
    expected = [f"images/{i:05d}.png" for i in range(1, 5)]
    expected += [f"labels/{i:05d}{s}.png" for i in range(1, 5) for s in ("", "_labelTrainIds")]
    assert _all_files(root) == sorted(expected)  # no temporary files left


def test_parallel_workers_give_the_same_outputs(tmp_path):
    serial = _gta5_tree(tmp_path / "a" / "gta5", n=6)
    parallel = _gta5_tree(tmp_path / "b" / "gta5", n=6)
    prepare_labels("gta5", str(serial), workers=1)
    summary = prepare_labels("gta5", str(parallel), workers=2)
    assert summary.written == 6
    for i in range(1, 7):
        name = f"labels/{i:05d}_labelTrainIds.png"
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_missing_folders_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing/labels does not exist(.|\n)*gta5/"):
        prepare_labels("gta5", str(tmp_path / "nothing"))
    (tmp_path / "empty/labels").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no official label files '\*\.png' under"):
        prepare_labels("gta5", str(tmp_path / "empty"))
    with pytest.raises(KeyError, match="ship train-id label maps"):
        prepare_labels("bdd100k", str(tmp_path))


def test_prepare_tool(tmp_path, capsys):
    tool = load_tool("prepare_dg_datasets")
    root = _gta5_tree(tmp_path / "gta5", n=2)
    assert tool.main(["gta5", "--root", str(root), "--workers", "1"]) == 0
    assert "wrote 2 train-id label maps" in capsys.readouterr().out
    assert tool.main(["gta5", "--root", str(root), "--workers", "1"]) == 0
    assert "kept 2" in capsys.readouterr().out
    assert tool.main(["cityscapes", "--root", str(tmp_path / "none"), "--workers", "1"]) == 1
    assert "none/gtFine/train does not exist" in capsys.readouterr().err
