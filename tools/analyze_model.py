#!/usr/bin/env python
"""
Print a model's parameters (trainable and total, per submodule) and its FLOPs, for any VLT config.

    python tools/analyze_model.py --config-file configs/vltseg_gta5.yaml --size 512 512
    python tools/analyze_model.py --config-file configs/vltseg_tiny_synthdg.yaml \
        MODEL.VLT_BACKBONE.FINETUNE rein

No weights are needed: the model is built with random initialization. FLOPs are counted by fvcore
for one image of the given size in inference mode (one fused multiply-add counts as one flop).
"""
import argparse

import torch
from detectron2.modeling import build_model

from vlt_common.engine import get_vlt_cfg
import vltdet  # noqa: F401  (the projects register their config keys and models)
import vltseg  # noqa: F401
from vlt_common.utils.model_stats import count_flops, count_parameters, parameter_table


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="input size for the FLOP count (default: the training crop size)",
    )
    parser.add_argument("--no-flops", action="store_true", help="only count parameters")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def analyze(cfg, size, with_flops=True):
    """
    Args:
        cfg (CfgNode): a VLT config (device is forced to the CPU).
        size (tuple[int, int]): (H, W) of the image the FLOPs are counted on.
        with_flops (bool):

    Returns:
        dict: "trainable", "total" (parameter counts), "table" (str) and, with FLOPs,
        "gflops" and "gflops_by_module".
    """
    model = build_model(cfg).eval()
    trainable, total = count_parameters(model)
    result = {"trainable": trainable, "total": total, "table": parameter_table(model)}
    if with_flops:
        image = torch.zeros(3, *size, dtype=torch.uint8)
        inputs = ([{"image": image, "height": size[0], "width": size[1]}],)
        with torch.no_grad():
            flops, by_module = count_flops(model, inputs)
        result["gflops"] = flops / 1e9
        result["gflops_by_module"] = {k: v / 1e9 for k, v in by_module.items()}
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    size = tuple(args.size) if args.size else tuple(cfg.INPUT.CROP.SIZE)
    result = analyze(cfg, size, with_flops=not args.no_flops)
    print(result["table"])
    print(f"parameters: {result['trainable']:,} trainable / {result['total']:,} total")
    if "gflops" in result:
        print(f"FLOPs at {size[0]}x{size[1]}: {result['gflops']:.2f} G")
        for name, gflops in result["gflops_by_module"].items():
            print(f"  {name}: {gflops:.2f} G")
    return result


if __name__ == "__main__":
    main()
