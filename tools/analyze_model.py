#!/usr/bin/env python
"""
Print parameters (trainable and total) and fvcore FLOPs of a VLT model or of its backbone alone.

    python tools/analyze_model.py --config-file configs/vltseg_gta5.yaml --size 512 512
    python tools/analyze_model.py --config-file configs/vltseg_tiny_synthdg.yaml \
        MODEL.VLT_BACKBONE.FINETUNE rein
    python tools/analyze_model.py --backbone --arch EVA02-L-14 --size 512 512
    python tools/analyze_model.py --backbone --arch timm:vit_large_patch14_dinov2 \
        --size 512 1024 MODEL.VLT_BACKBONE.FINETUNE rein

The whole model (a config file is needed) gets a table of parameters per submodule and FLOPs per
module; ``--backbone`` builds only the VLT backbone and adds the shapes and strides of its feature
maps. The flags (``--arch``, ``--output``, ...) override the config file; any key can follow as
``KEY VALUE`` pairs. No weights are needed: the weights stay random unless
``MODEL.VLT_BACKBONE.PRETRAINED`` is given among those pairs. FLOPs are counted by fvcore for one
image in inference mode (one fused multiply-add counts as one flop, fvcore's convention);
attention (``scaled_dot_product_attention``) is counted too.
"""
import argparse
import sys
import time

import torch
from detectron2.modeling import build_model
from tabulate import tabulate

import vltdet  # noqa: F401  (the projects register their config keys and models)
import vltseg  # noqa: F401
from vlt_common.engine import setup_cfg
from vlt_common.modeling.backbone import CLIPViTBackbone
from vlt_common.utils.model_stats import count_flops, count_parameters, parameter_table

# Command-line flags and the keys they set.
_FLAG_KEYS = {
    "arch": "MODEL.VLT_BACKBONE.ARCH",
    "output": "MODEL.VLT_BACKBONE.OUTPUT",
    "patch_size": "MODEL.VLT_BACKBONE.PATCH_SIZE",
    "embed_dim": "MODEL.VLT_BACKBONE.EMBED_DIM",
    "depth": "MODEL.VLT_BACKBONE.DEPTH",
    "num_heads": "MODEL.VLT_BACKBONE.NUM_HEADS",
}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--config-file", default="", metavar="FILE", help="a VLT yaml config")
    parser.add_argument("--backbone", action="store_true",
                        help="the backbone alone, with its feature shapes")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="input size for the FLOP count (default: the training crop size, or 512 512 with "
        "--backbone)",
    )
    for flag, key in _FLAG_KEYS.items():
        kind = str if flag in ("arch", "output") else int
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, help=key)
    parser.add_argument("--no-flops", action="store_true", help="only count parameters")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def build_cfg(args):
    """The config of ``--config-file`` (or the defaults), then the flags, then ``opts``; on the
    CPU. Unknown keys are errors naming them."""
    # Random initialization unless ``opts`` name weights: parameters and FLOPs do not depend on
    # them, and a recipe's weight path may not exist on this machine.
    opts = ["MODEL.VLT_BACKBONE.PRETRAINED", "", "MODEL.DEVICE", "cpu"]
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            opts += [key, str(value)]
    if args.output == "single":
        opts += ["MODEL.VLT_BACKBONE.OUT_FEATURES", "['last_feat']"]
    run_args = argparse.Namespace(config_file=args.config_file, opts=opts + list(args.opts))
    return setup_cfg(run_args, log=False)


def analyze(cfg, size, with_flops=True):
    """
    Args:
        cfg (CfgNode): a VLT config of a whole model (on the CPU).
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


def describe_backbone(cfg, size, with_flops=True):
    """
    Args:
        cfg (CfgNode): a config with the ``MODEL.VLT_BACKBONE`` keys.
        size (tuple[int, int]): (H, W) of the input image.
        with_flops (bool): count FLOPs with fvcore (traces one forward pass).

    Returns:
        str: the description (architecture, parameters, FLOPs, feature shapes and strides).
    """
    backbone = CLIPViTBackbone(cfg).eval()
    trunk = backbone.trunk
    lines = [
        f"{cfg.MODEL.VLT_BACKBONE.ARCH}: {type(trunk).__module__}.{type(trunk).__name__}, "
        f"{backbone.num_layers} blocks, width {backbone.embed_dim}, patch {backbone.patch_size}, "
        f"{backbone.num_prefix_tokens} prefix token(s); output "
        f"'{cfg.MODEL.VLT_BACKBONE.OUTPUT}', finetune '{cfg.MODEL.VLT_BACKBONE.FINETUNE}'",
    ]
    trainable, total = count_parameters(backbone)
    lines.append(f"parameters: {trainable:,} trainable / {total:,} total")
    image = torch.zeros(1, 3, *size)
    if with_flops:
        flops, _ = count_flops(backbone, (image,))
        lines.append(
            f"FLOPs at {size[0]}x{size[1]}: {flops / 1e9:.2f} G "
            "(fvcore; one multiply-add = one flop)"
        )
    with torch.no_grad():
        features = backbone(image)
    specs = backbone.output_shape()
    rows = [(k, tuple(v.shape), specs[k].stride) for k, v in features.items()]
    lines.append(tabulate(rows, headers=["feature", "shape", "stride"], tablefmt="pipe"))
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.backbone and not args.config_file:
        raise SystemExit("--config-file is required for a whole model (or use --backbone)")
    start = time.perf_counter()
    cfg = build_cfg(args)
    if args.backbone:
        size = tuple(args.size) if args.size else (512, 512)
        weights = cfg.MODEL.VLT_BACKBONE.PRETRAINED or "random initialization"
        print(f"Building {cfg.MODEL.VLT_BACKBONE.ARCH} ({weights}) ...", file=sys.stderr)
        print(describe_backbone(cfg, size, with_flops=not args.no_flops))
        print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        return None
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
