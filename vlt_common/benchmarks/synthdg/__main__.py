"""Generate SynthDG and write a preview grid.

Usage::

    python -m vlt_common.benchmarks.synthdg --root datasets --preview synthdg_preview.png
"""
import argparse
import logging
import os
import time

from .generate import ensure_synthdg
from .preview import write_preview
from .spec import DEFAULT_SPEC, SynthDGSpec


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate the SynthDG benchmark (six domains) and optionally a preview grid."
    )
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="datasets root; the copy goes to <root>/synthdg (default: $DETECTRON2_DATASETS "
        "or ./datasets)",
    )
    parser.add_argument("--preview", help="write a preview grid (PNG) of one validation scene")
    parser.add_argument("--scene", type=int, default=0, help="validation scene of the preview")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPEC.seed)
    parser.add_argument("--height", type=int, default=DEFAULT_SPEC.height)
    parser.add_argument("--width", type=int, default=DEFAULT_SPEC.width)
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPEC.num_train)
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPEC.num_val)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    spec = SynthDGSpec(
        seed=args.seed,
        height=args.height,
        width=args.width,
        num_train=args.num_train,
        num_val=args.num_val,
    )
    start = time.perf_counter()
    directory = ensure_synthdg(args.root, spec, num_workers=args.workers)
    print(f"SynthDG ready in {directory} ({time.perf_counter() - start:.1f} s)")
    if args.preview:
        write_preview(args.root, args.preview, spec, index=args.scene)
        print(f"Preview written to {args.preview}")

if __name__ == "__main__":
    main()
