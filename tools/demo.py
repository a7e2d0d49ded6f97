#!/usr/bin/env python
"""
Run a trained VLT model on images and write coloured overlays (segmentation) or boxes and masks
(detection), drawn with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/vltseg_tiny_synthdg.yaml \
        --input frame.png more_frames/ frames.txt --output output/demo_vis \
        MODEL.WEIGHTS output/demo_seg/model_final.pth

``--input`` takes image files, folders (every image inside, sorted: a video's frames) and text files
that list one image path per line (a frame list).
"""
import argparse
import logging
import os

import numpy as np
import torch
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

import vltdet  # noqa: F401  (the projects register their config keys and models)
import vltseg  # noqa: F401
from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine import AtomicCheckpointer, get_vlt_cfg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
logger = logging.getLogger("vlt.demo")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or frame lists")
    parser.add_argument("--output", required=True, help="folder for the overlays")
    parser.add_argument(
        "--metadata", default=None,
        help="registered dataset whose class names/colours to draw (default: DATASETS.TEST[0])",
    )
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detection only")
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


def run(cfg, paths, output_dir, metadata, score_threshold=0.5):
    """
    Predict and draw every image of ``paths`` into ``output_dir`` (same file names, .png).

    Returns:
        list[str]: the written files.
    """
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS is empty: pass the trained checkpoint to draw predictions of"
        )
    model = build_model(cfg).eval()
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    mapper = build_dataset_mapper(cfg, is_train=False)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in tqdm.tqdm(paths, desc="predicting", unit="image"):
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    metadata = MetadataCatalog.get(args.metadata or cfg.DATASETS.TEST[0])
    written = run(cfg, expand_inputs(args.input), args.output, metadata, args.score_threshold)
    print(f"wrote {len(written)} overlays to {os.path.abspath(args.output)}")
    return written


if __name__ == "__main__":
    main()
