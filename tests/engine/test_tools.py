"""The user tools: prediction overlays (tools/demo.py), model analysis (tools/analyze_model.py)
and the fine-tuning study (tools/run_study.py)."""
import json
import os
import pathlib

import numpy as np
import pytest
from detectron2.modeling import build_model
from PIL import Image

from tests.tool_loader import load_tool
from vlt_common.engine import AtomicCheckpointer, get_vlt_cfg

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared/data/cityscapes_sample"
SEG_CONFIG = str(REPO / "configs" / "vltseg_tiny_synthdg.yaml")


@pytest.fixture(scope="module")
def seg_weights(tmp_path_factory):
    """A checkpoint of the tiny demo model (random weights are enough to draw something)."""
    cfg = get_vlt_cfg()
    cfg.merge_from_file(SEG_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    folder = tmp_path_factory.mktemp("weights")
    AtomicCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def _image(path, height, width, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def test_demo_draws_overlays_for_files_folders_and_frame_lists(tmp_path, seg_weights):
    demo = load_tool("demo")
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(2):
        _image(frames / f"frame_{k}.png", 64, 128, k)
    single = tmp_path / "single.png"
    _image(single, 96, 160, 7)
    frame_list = tmp_path / "frames.txt"
    frame_list.write_text(f"{frames / 'frame_1.png'}\n")
    out = tmp_path / "vis"
    written = demo.main(["--config-file", SEG_CONFIG, "--input", str(single), str(frames),
                         str(frame_list), "--output", str(out), "MODEL.WEIGHTS", seg_weights])
    assert len(written) == 4  # the listed frame is drawn again under the same name
    assert sorted(os.listdir(out)) == ["frame_0.png", "frame_1.png", "single.png"]
    drawn = np.asarray(Image.open(out / "single.png").convert("RGB"))
    original = np.asarray(Image.open(single).convert("RGB"))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 1.0  # an overlay was drawn


def test_demo_errors_name_the_problem(tmp_path, seg_weights):
    demo = load_tool("demo")
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        demo.main(["--config-file", SEG_CONFIG, "--input", str(tmp_path / "nowhere.png"),
                   "--output", str(tmp_path / "o"), "MODEL.WEIGHTS", seg_weights])
    listed = tmp_path / "list.txt"
    listed.write_text("/no/such/frame.png\n")
    with pytest.raises(FileNotFoundError, match="list.txt.*/no/such/frame.png"):
        demo.main(["--config-file", SEG_CONFIG, "--input", str(listed), "--output",
                   str(tmp_path / "o"), "MODEL.WEIGHTS", seg_weights])
    _image(tmp_path / "a.png", 64, 64, 0)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        demo.main(["--config-file", SEG_CONFIG, "--input", str(tmp_path / "a.png"), "--output",
                   str(tmp_path / "o")])


def _write_video(path, frames, fps=5.0):
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame[:, :, ::-1])
    writer.release()


def _read_video(path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1].astype(int))
    capture.release()
    return fps, frames


@pytest.mark.parametrize("output", ["drive_vis.mp4", "drive_vis.avi", "folder"])
def test_demo_annotates_a_video(tmp_path, seg_weights, output):
    demo = load_tool("demo")
    # Smooth frames (a moving gradient): the codecs keep them within a few grey levels, far
    # below what an overlay changes.
    y, x = np.mgrid[0:64, 0:96]
    frames = [
        np.stack([(x * 2 + 20 * k) % 256, y * 3, np.full_like(x, 90)], -1).astype(np.uint8)
        for k in range(4)
    ]
    video = tmp_path / "drive.avi"
    _write_video(video, frames)
    _, decoded_input = _read_video(video)
    written = demo.main(["--config-file", SEG_CONFIG, "--video-input", str(video), "--output",
                         str(tmp_path / output), "MODEL.WEIGHTS", seg_weights])
    expected = tmp_path / ("folder/drive.mp4" if output == "folder" else output)
    assert written == str(expected)
    fps, drawn = _read_video(expected)
    assert fps == pytest.approx(5.0) and len(drawn) == 4
    for before, after in zip(decoded_input, drawn):
        assert after.shape == (64, 96, 3)
        assert np.abs(after - before).mean() > 10.0  # the frame carries the overlay


def test_demo_draws_corrupted_images(tmp_path, seg_weights):
    from vlt_common.data.corruptions import read_dataset_image

    demo = load_tool("demo")
    _image(tmp_path / "street.png", 64, 128, 3)
    args = ["--config-file", SEG_CONFIG, "--input", str(tmp_path / "street.png"),
            "MODEL.WEIGHTS", seg_weights]
    (clean,) = demo.main(args[:4] + ["--output", str(tmp_path / "clean")] + args[4:])
    (fog,) = demo.main(args[:4] + ["--output", str(tmp_path / "fog"), "--corruption", "fog",
                                   "5"] + args[4:])
    fog_rgb = read_dataset_image(
        {"file_name": str(tmp_path / "street.png"), "corruption": {"name": "fog", "severity": 5}},
        "RGB",
    )
    # The same pixels saved losslessly and drawn without --corruption give the same picture: the
    # corrupted image is what the model saw and what the drawing is made on.
    Image.fromarray(fog_rgb).save(tmp_path / "fogged.png")
    (reference,) = demo.main(
        ["--config-file", SEG_CONFIG, "--input", str(tmp_path / "fogged.png"), "--output",
         str(tmp_path / "reference")] + args[4:]
    )
    drawn_fog = np.asarray(Image.open(fog).convert("RGB"))
    assert np.array_equal(drawn_fog, np.asarray(Image.open(reference).convert("RGB")))
    assert not np.array_equal(drawn_fog, np.asarray(Image.open(clean).convert("RGB")))
    with pytest.raises(ValueError, match="--corruption: unknown corruption 'haze'"):
        demo.main(args[:4] + ["--output", str(tmp_path / "x"), "--corruption", "haze", "1"]
                  + args[4:])


def test_demo_video_errors_name_the_file(tmp_path, seg_weights):
    demo = load_tool("demo")
    bogus = tmp_path / "clip.mp4"
    bogus.write_text("not a video")
    with pytest.raises(ValueError, match="clip.mp4.*not a video file OpenCV can read"):
        demo.main(["--config-file", SEG_CONFIG, "--video-input", str(bogus), "--output",
                   str(tmp_path / "o.mp4"), "MODEL.WEIGHTS", seg_weights])
    with pytest.raises(SystemExit):  # --input and --video-input exclude each other
        demo.main(["--config-file", SEG_CONFIG, "--video-input", str(bogus), "--input",
                   str(bogus), "--output", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Cityscapes sample not present")
def test_demo_on_the_real_cityscapes_frame(tmp_path, seg_weights):
    demo = load_tool("demo")
    frame = SAMPLE / "frankfurt_leftImg8bit.png"
    (written,) = demo.main(["--config-file", SEG_CONFIG, "--input", str(frame), "--output",
                            str(tmp_path), "MODEL.WEIGHTS", seg_weights])
    assert Image.open(written).size == Image.open(frame).size == (2048, 1024)


def test_analyze_model_counts_parameters_and_flops():
    analyze = load_tool("analyze_model")
    cfg = get_vlt_cfg()
    cfg.merge_from_file(SEG_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    full = analyze.analyze(cfg, (64, 128))
    model = build_model(cfg)
    assert full["total"] == sum(p.numel() for p in model.parameters())
    assert full["trainable"] == full["total"]
    assert full["gflops"] > 0 and "backbone" in full["gflops_by_module"]
    assert "sem_seg_head" in full["table"]
    # FLOPs grow with the image: 4x the pixels, at least 3x the work.
    bigger = analyze.analyze(cfg, (128, 256))
    assert bigger["gflops"] > 3 * full["gflops"]

    cfg.MODEL.VLT_BACKBONE.FINETUNE = "rein"
    cfg.MODEL.VLT_BACKBONE.REIN.NUM_TOKENS = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    rein = analyze.analyze(cfg, (64, 128), with_flops=False)
    trunk = sum(p.numel() for p in model.backbone.trunk.parameters())
    assert rein["trainable"] < rein["total"] - trunk + 1
    assert "gflops" not in rein


@pytest.mark.slow
def test_study_trains_each_mode_and_writes_one_table(tmp_path, tree_pythonpath, monkeypatch):
    from tests.engine.tiny_train_net import tiny_opts

    study_tool = load_tool("run_study")
    monkeypatch.setenv("VLT_TINY_SYNTHDG_ROOT", str(tmp_path / "synthdg"))
    monkeypatch.setenv("PYTHONPATH", tree_pythonpath)
    study = study_tool.main([
        "--config-file", SEG_CONFIG, "--output", str(tmp_path / "study"),
        "--modes", "full", "rein", "--train-script",
        str(REPO / "tests" / "engine" / "tiny_train_net.py"),
        *tiny_opts(test_domains=("source", "fog")),
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
        "MODEL.VLT_BACKBONE.REIN.NUM_TOKENS", "24",
    ])
    assert [r["mode"] for r in study["runs"]] == ["full", "rein"]
    assert study["metric"] == "mIoU" and len(study["domains"]) == 2
    on_disk = json.loads((tmp_path / "study" / "study.json").read_text())
    assert on_disk == json.loads(json.dumps(study))
    table = (tmp_path / "study" / "study.md").read_text()
    # One row per mode, in the order run, with that run's mean over the target domains.
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert header[:2] == ["backbone", "mode"] and header[-2] == "mean target", table
    assert [row[1] for row in rows] == ["full", "rein"], table
    means = [float(row[-2]) for row in rows]
    assert means == pytest.approx([r["mean_target"] for r in study["runs"]], abs=0.05), table
    assert (tmp_path / "study" / "study.png").stat().st_size > 1000
    for mode in ("full", "rein"):
        config = (tmp_path / "study" / f"ViT-B-16__{mode}" / "config.yaml").read_text()
        assert f"FINETUNE: {mode}" in config
