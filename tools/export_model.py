#!/usr/bin/env python
"""
Export a trained VLT model to ONNX, run it with onnxruntime and print its difference to PyTorch.

    python tools/export_model.py --config-file configs/vltseg_gta5.yaml \
        --output output/vltseg.onnx --input image.png \
        MODEL.WEIGHTS output/vltseg_gta5/model_final.pth

VLTSeg: exported is one window of the model, ``scores = model(image)``: input ``image`` float32
[1, 3, H, W] (0..255 pixels in the config's INPUT.FORMAT, H x W the sliding window's CROP_SIZE or
--size, multiples of the backbone's patch size), output ``scores`` [1, K, H, W], the per-class
scores of Mask2Former's semantic inference (what ``VLTSeg.semantic_scores`` returns). The sliding
window, test-time augmentation and the resize to the original resolution stay in Python
(``vltseg.inference``). The graph is traced (TorchScript exporter) at ONNX opset 18 (GridSample
needs >= 16, an antialiased Resize >= 18); the deformable attention takes its ``grid_sample``
backend while exporting.

VLTDet (GeneralizedRCNN): exported through Detectron2's ``TracingAdapter`` where that works; when
the trace or the export fails, the tool says so and why, and exits with status 2.

--input resizes a real image to the window (bilinear); without it a seeded random image is used.
The check prints the max absolute difference of onnxruntime's output (CPU) to PyTorch's.
"""
import argparse
import contextlib
import logging
import sys
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from torch import nn

from vlt_common.engine import AtomicCheckpointer, get_vlt_cfg

logger = logging.getLogger("vlt.export_model")

# ONNX opset of the export: GridSample (the deformable attention) exists from opset 16 on,
# Resize's ``antialias`` (the ViT's position-embedding resampling) from opset 18 on.
OPSET = 18


def _antialiased_bicubic(g, image, output_size, *_):
    """ONNX form of ``F.interpolate(mode="bicubic", antialias=True)`` (timm resamples the
    position embedding with it), which the TorchScript exporter lacks: Resize with antialias,
    PyTorch's antialiasing cubic kernel (a = -0.5) and weights renormalized inside the image."""
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    first_two = g.op(
        "Slice",
        g.op("Shape", image),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    sizes = g.op("Concat", first_two, g.op("Cast", output_size, to_i=7), axis_i=0)  # int64
    return g.op(
        "Resize", image, empty, empty, sizes, mode_s="cubic", antialias_i=1,
        cubic_coeff_a_f=-0.5, exclude_outside_i=1, coordinate_transformation_mode_s="half_pixel",
    )  # fmt: skip


torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_bicubic, OPSET)


@contextlib.contextmanager
def _exportable_attention():
    """nn.MultiheadAttention without its inference fast path (a fused op ONNX lacks)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class SemanticScores(nn.Module):
    """One window of a VLTSeg model: raw image [B, 3, H, W] (0..255) -> scores [B, K, H, W]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        normalized = (image - self.model.pixel_mean) / self.model.pixel_std
        return self.model.semantic_scores(normalized)


def load_image(path: Optional[str], size: Tuple[int, int], image_format: str) -> torch.Tensor:
    """
    Returns:
        Tensor: float32 [1, 3, H, W] with 0..255 values: the image at ``path`` resized to
        ``size``, or a seeded random image when ``path`` is None.
    """
    if path is None:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (1, 3, *size), generator=generator).float()
    array = read_image(path, format=image_format)  # [H, W, 3] uint8
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float()
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False).round()


def export_vltseg(model: nn.Module, image: torch.Tensor, path: str) -> np.ndarray:
    """
    Export one window of ``model`` (eval mode) to ``path`` and return PyTorch's scores.

    Args:
        image (Tensor): float32 [1, 3, H, W], 0..255; fixes the exported size.
    """
    wrapper = SemanticScores(model).eval()
    with torch.no_grad(), _exportable_attention():
        expected = wrapper(image).numpy()
        torch.onnx.export(
            wrapper,
            (image,),
            path,
            input_names=["image"],
            output_names=["scores"],
            opset_version=OPSET,
            dynamo=False,
        )
    return expected


def export_vltdet(model: nn.Module, image: torch.Tensor, path: str) -> List[np.ndarray]:
    """
    Export a GeneralizedRCNN with Detectron2's TracingAdapter (inference without
    post-processing: boxes in the input's resolution; the graph's input is the image
    [3, H, W]) and return PyTorch's flattened outputs (boxes, classes, masks, scores).
    """
    from detectron2.export import TracingAdapter

    def inference(m, inputs):
        return m.inference(inputs, do_postprocess=False)[0]

    inputs = [{"image": image[0]}]
    adapter = TracingAdapter(model, inputs, inference)
    with torch.no_grad(), _exportable_attention():
        expected = [t.numpy() for t in adapter(*adapter.flattened_inputs)]
        torch.onnx.export(
            adapter, adapter.flattened_inputs, path, opset_version=OPSET, dynamo=False
        )
    return expected


def run_onnxruntime(path: str, image: torch.Tensor):
    """Run the exported model on the CPU with ``image`` as its one input; returns the list of
    outputs and the seconds taken."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image.numpy()}
    start = time.perf_counter()
    outputs = session.run(None, feed)
    return outputs, time.perf_counter() - start


def max_difference(actual, expected) -> float:
    """Max absolute difference over matching outputs (arrays or lists of arrays)."""
    if isinstance(expected, np.ndarray):
        actual, expected = actual[:1], [expected]
    if len(actual) != len(expected):
        raise ValueError(f"onnxruntime returned {len(actual)} outputs, PyTorch {len(expected)}")
    diffs = []
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            raise ValueError(f"output shape {a.shape} differs from PyTorch's {e.shape}")
        diffs.append(float(np.abs(a - e).max()) if e.size else 0.0)
    return max(diffs)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="path of the .onnx file to write")
    parser.add_argument("--input", default=None, help="image for the check (default: random)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="exported window (default: VLTSeg's TEST.SLIDING_WINDOW.CROP_SIZE, VLTDet's "
        "INPUT.MAX_SIZE_TEST square)",
    )  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None) -> float:
    """Returns the max absolute difference between onnxruntime and PyTorch."""
    args = build_parser().parse_args(argv)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in ("VLTSeg", "GeneralizedRCNN"):
        raise ValueError(f"MODEL.META_ARCHITECTURE: cannot export {arch!r} (VLTSeg or VLTDet)")
    if args.size:
        size = tuple(args.size)
    elif arch == "VLTSeg":
        size = tuple(cfg.TEST.SLIDING_WINDOW.CROP_SIZE)
    else:
        size = (cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialized weights")
    image = load_image(args.input, size, cfg.INPUT.FORMAT)
    start = time.perf_counter()
    if arch == "VLTSeg":
        expected = export_vltseg(model, image, args.output)
    else:
        try:
            expected = export_vltdet(model, image, args.output)
        except Exception as e:  # noqa: BLE001  (any trace/export failure gets the same message)
            print(
                f"VLTDet export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
                "Detectron2's ONNX export of GeneralizedRCNN traces the box and mask heads; see "
                "the README (Tools, Export) for what is supported.",
                file=sys.stderr,
            )
            raise SystemExit(2) from e
    export_s = time.perf_counter() - start
    # VLTDet's traced graph takes the image without the batch dimension.
    outputs, run_s = run_onnxruntime(args.output, image if arch == "VLTSeg" else image[0])
    diff = max_difference(outputs, expected)
    print(
        f"exported {arch} ({size[0]}x{size[1]}, opset {OPSET}) to {args.output} "
        f"in {export_s:.1f} s"
    )
    print(f"onnxruntime (CPU) ran it in {run_s:.2f} s; outputs: {[list(o.shape) for o in outputs]}")
    print(f"max abs difference to PyTorch: {diff:.2e}")
    return diff


if __name__ == "__main__":
    main()
