"""
Build a VLT backbone without weights and describe it: trainable / total parameters, fvcore FLOPs
at an input size, and the shapes and strides of its feature maps.

    python -m vlt_common.tools.describe_backbone --arch EVA02-L-14 --size 512 512
    python -m vlt_common.tools.describe_backbone --arch timm:vit_large_patch14_dinov2 \
        --size 512 1024 MODEL.VLT_BACKBONE.FINETUNE rein
    python -m vlt_common.tools.describe_backbone --config-file configs/<recipe>.yaml

Flags override the config file; any key can follow as ``KEY VALUE`` pairs. The weights stay
random unless ``MODEL.VLT_BACKBONE.PRETRAINED`` is given among those pairs. FLOPs are counted by
fvcore for one image in inference mode (one fused multiply-add counts as one flop, fvcore's
convention); attention (``scaled_dot_product_attention``) is counted too.
"""
import argparse
import sys
import time

import torch
from tabulate import tabulate

from vlt_common.engine import setup_cfg
from vlt_common.modeling.backbone import CLIPViTBackbone
from vlt_common.utils.model_stats import count_flops, count_parameters

__all__ = ["build_parser", "describe", "main"]

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
    """Returns: argparse.ArgumentParser of the command."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--config-file", default="", metavar="FILE", help="a VLT yaml config")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="input size"
    )
    for flag, key in _FLAG_KEYS.items():
        kind = str if flag in ("arch", "output") else int
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, help=key)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def _backbone_cfg(args):
    """The config of ``--config-file`` (or the defaults), then the flags, then ``opts``."""
    # Random initialization unless ``opts`` name weights: parameters and FLOPs do not depend on
    # them, and a recipe's weight path may not exist on this machine.
    opts = ["MODEL.VLT_BACKBONE.PRETRAINED", ""]
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            opts += [key, str(value)]
    if args.output == "single":
        opts += ["MODEL.VLT_BACKBONE.OUT_FEATURES", "['last_feat']"]
    run_args = argparse.Namespace(config_file=args.config_file, opts=opts + list(args.opts))
    return setup_cfg(run_args, log=False)


def describe(cfg, size, with_flops=True):
    """
    Args:
        cfg (CfgNode): a config with the ``MODEL.VLT_BACKBONE`` keys.
        size (tuple[int, int]): (H, W) of the input image.
        with_flops (bool): count FLOPs with fvcore (traces one forward pass).

    Returns:
        str: the description.
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
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    cfg = _backbone_cfg(args)
    weights = cfg.MODEL.VLT_BACKBONE.PRETRAINED or "random initialization"
    print(f"Building {cfg.MODEL.VLT_BACKBONE.ARCH} ({weights}) ...", file=sys.stderr)
    text = describe(cfg, tuple(args.size), with_flops=not args.no_flops)
    print(text)
    print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
