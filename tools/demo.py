#!/usr/bin/env python
"""
Run a trained VLT model on images or a video and write coloured overlays (segmentation) or boxes
and masks (detection), drawn with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/vltseg_tiny_synthdg.yaml \
        --input frame.png more_frames/ frames.txt --output output/demo_vis \
        MODEL.WEIGHTS output/demo_seg/model_final.pth
    python tools/demo.py --config-file configs/vltseg_tiny_synthdg.yaml \
        --video-input drive.mp4 --output output/drive_vis.mp4 MODEL.WEIGHTS ...

``--input`` takes image files, folders (every image inside, sorted: a video's frames) and text files
that list one image path per line (a frame list). ``--video-input`` takes a video file that OpenCV
reads; the annotated video (same size and frame rate) goes to ``--output``: a file ending in .mp4
(codec mp4v) or .avi (MJPG), or a folder, which gets ``<video name>.mp4``.
"""
import argparse
import logging
import os

import cv2
import numpy as np
import torch
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

import vltdet  # noqa: F401  (the projects register their config keys and models)
import vltseg  # noqa: F401
from vlt_common.data.corruptions import check_corruption, read_dataset_image
from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine import AtomicCheckpointer, get_vlt_cfg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Output video container -> OpenCV codec (both are in the opencv-python-headless wheels).
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
logger = logging.getLogger("vlt.demo")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="images, folders or frame lists")
    source.add_argument("--video-input", help="a video file (read with OpenCV)")
    parser.add_argument(
        "--output", required=True,
        help="folder for the overlays; with --video-input a .mp4/.avi file or a folder",
    )
    parser.add_argument(
        "--metadata", default=None,
        help="registered dataset whose class names/colours to draw (default: DATASETS.TEST[0])",
    )
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detection only")
    parser.add_argument(
        "--corruption", nargs=2, metavar=("NAME", "SEVERITY"), default=None,
        help="with --input: corrupt each image first, as the <dataset>_c_<NAME>_<SEVERITY> test "
        "domains do (e.g. fog 3), and draw on the corrupted image",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def expand_inputs(inputs):
    """
    Args:
        inputs (list[str]): image files, folders and text files listing images.

    Returns:
        list[str]: image paths in order.

    Raises:
        FileNotFoundError: naming an input that does not exist or a listed frame that is missing.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(n for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(item, n) for n in names]
        elif item.lower().endswith(".txt") and os.path.isfile(item):
            with open(item) as f:
                listed = [line.strip() for line in f if line.strip()]
            for frame in listed:
                if not os.path.isfile(frame):
                    raise FileNotFoundError(f"{item}: listed frame {frame!r} does not exist")
            paths += listed
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"--input {item!r} is neither an image, a folder nor a list")
    return paths


def draw(image_rgb, prediction, metadata, score_threshold):
    """
    Args:
        image_rgb (ndarray): HxWx3 uint8, the original image.
        prediction (dict): one model output, with "sem_seg" ([K, H, W] scores) or "instances".
        metadata (Metadata): class names and colours.
        score_threshold (float): minimum detection score drawn.

    Returns:
        ndarray: HxWx3 uint8 visualization.
    """
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "sem_seg" in prediction:
        labels = prediction["sem_seg"].argmax(dim=0).cpu()
        return visualizer.draw_sem_seg(labels, alpha=0.6).get_image()
    instances = prediction["instances"].to("cpu")
    instances = instances[instances.scores >= score_threshold]
    return visualizer.draw_instance_predictions(instances).get_image()


def load_model(cfg):
    """The model in eval mode with ``MODEL.WEIGHTS`` loaded, and the inference mapper."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS is empty: pass the trained checkpoint to draw predictions of"
        )
    model = build_model(cfg).eval()
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model, build_dataset_mapper(cfg, is_train=False)


def predict_array(model, mapper, image_rgb):
    """
    Predict an image held in memory (a video frame) with the mapper's test-time resizing.

    Args:
        model (nn.Module): in eval mode.
        mapper: the inference mapper; its ``image_format`` and ``augmentations`` are used.
        image_rgb (ndarray): HxWx3 uint8 RGB.

    Returns:
        dict: the model's output for the image, at its original size.
    """
    image = convert_PIL_to_numpy(Image.fromarray(image_rgb), mapper.image_format)
    aug_input = T.AugInput(image)
    mapper.augmentations(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    inputs = {"image": tensor, "height": image_rgb.shape[0], "width": image_rgb.shape[1]}
    with torch.no_grad():
        return model([inputs])[0]


def video_output_path(output, video_path):
    """``output`` when it names a .mp4/.avi file, else ``<output>/<video name>.mp4``."""
    if os.path.splitext(output)[1].lower() in VIDEO_CODECS:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")


def run_video(cfg, video_path, output, metadata, score_threshold=0.5):
    """
    Predict and draw every frame of a video into an annotated video of the same size and rate.

    Returns:
        str: the written video.

    Raises:
        ValueError: OpenCV cannot read the video or write the output (the message names it).
    """
    capture = cv2.VideoCapture(video_path)
    if not os.path.isfile(video_path) or not capture.isOpened():
        raise ValueError(f"--video-input {video_path!r}: not a video file OpenCV can read")
    model, mapper = load_model(cfg)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = video_output_path(output, video_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    codec = VIDEO_CODECS[os.path.splitext(out_path)[1].lower()]
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"--output {out_path!r}: OpenCV cannot write a {codec} video there")
    try:
        with tqdm.tqdm(total=num_frames, desc="predicting", unit="frame") as bar:
            while True:
                ok, frame_bgr = capture.read()
                if not ok:
                    break
                frame_rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
                prediction = predict_array(model, mapper, frame_rgb)
                vis = draw(frame_rgb, prediction, metadata, score_threshold)
                writer.write(np.ascontiguousarray(vis[:, :, ::-1]))
                bar.update(1)
    finally:
        capture.release()
        writer.release()
    return out_path


def run(cfg, paths, output_dir, metadata, score_threshold=0.5, corruption=None):
    """
    Predict and draw every image of ``paths`` into ``output_dir`` (same file names, .png).

    Args:
        corruption (dict or None): {"name", "severity"}: predict and draw the image corrupted
            as in the corrupted test domains (:mod:`vlt_common.data.corruptions`).

    Returns:
        list[str]: the written files.
    """
    model, mapper = load_model(cfg)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in tqdm.tqdm(paths, desc="predicting", unit="image"):
        if corruption is not None:
            image_rgb = read_dataset_image({"file_name": path, "corruption": corruption}, "RGB")
            prediction = predict_array(model, mapper, image_rgb)
        else:
            with Image.open(path) as im:
                width, height = im.size
            inputs = mapper({"file_name": path, "height": height, "width": width})
            with torch.no_grad():
                prediction = model([inputs])[0]
            image_rgb = np.asarray(Image.open(path).convert("RGB"))
        vis = draw(image_rgb, prediction, metadata, score_threshold)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(vis).save(out)
        written.append(out)
    return written


def parse_corruption(parser, args):
    """``--corruption NAME SEVERITY`` as {"name", "severity"}, or None; errors exit."""
    if not args.corruption:
        return None
    if args.video_input:
        parser.error("--corruption applies to --input images only (it is seeded per file name)")
    name, severity = args.corruption
    if not severity.isdigit():
        parser.error(f"--corruption {name} {severity}: the severity must be an integer 1..5")
    check_corruption(name, int(severity), "--corruption")
    return {"name": name, "severity": int(severity)}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    corruption = parse_corruption(parser, args)
    logging.basicConfig(level=logging.INFO)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    metadata = MetadataCatalog.get(args.metadata or cfg.DATASETS.TEST[0])
    if args.video_input:
        written = run_video(cfg, args.video_input, args.output, metadata, args.score_threshold)
        print(f"wrote the annotated video {os.path.abspath(written)}")
        return written
    paths = expand_inputs(args.input)
    written = run(cfg, paths, args.output, metadata, args.score_threshold, corruption)
    print(f"wrote {len(written)} overlays to {os.path.abspath(args.output)}")
    return written


if __name__ == "__main__":
    main()
