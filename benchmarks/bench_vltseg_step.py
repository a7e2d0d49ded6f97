"""Time and peak memory of one VLTSeg training step on this machine's CPU.

The model is the paper's: a ViT-B/16 backbone (random weights; timing does not depend on them)
with the full Mask2Former head (6-layer MSDeformAttn pixel decoder, 9-layer decoder, 100
queries, 12544 matching points), on 512x512 crops, batch 1. A step is forward, backward and an
AdamW update. The reference, measured in the same run, is the backbone alone (forward + backward
of the sum of its outputs), so the printed ratio says what the head and the losses add on top of
the encoder, independently of how fast the machine is.

Each measurement runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is
its own::

    python -m benchmarks.bench_vltseg_step                  # the paper's sizes
    python -m benchmarks.bench_vltseg_step --size 128 --iters 1 --tiny   # a quick smoke run
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

_REPO_ROOT = Path(__file__).resolve().parents[1]
_CONFIG = _REPO_ROOT / "configs" / "Base-VLTSeg.yaml"


def _build_cfg(args):
    import vltseg  # noqa: F401  (registers VLTSeg's config keys and model)
    from vlt_common.engine.defaults import get_vlt_cfg

    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VLT_BACKBONE.ARCH = args.arch
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    cfg.MODEL.VLT_BACKBONE.DROP_PATH_RATE = 0.0
    if args.tiny:
        # Smoke-test sizes: a 2-block width-64 trunk and a 1-layer pixel decoder.
        cfg.MODEL.VLT_BACKBONE.EMBED_DIM = 64
        cfg.MODEL.VLT_BACKBONE.DEPTH = 2
        cfg.MODEL.VLT_BACKBONE.NUM_HEADS = 2
        cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
        cfg.MODEL.MASK_FORMER.DEC_LAYERS = 2
        cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 1024
    cfg.freeze()
    return cfg


def _batch(size: int, num_classes: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
    # A blocky label map (8x8 cells of random classes): a realistic number of masks per image.
    cells = torch.randint(0, num_classes, (8, 8), generator=generator)
    sem_seg = cells.repeat_interleave(-(-size // 8), 0).repeat_interleave(-(-size // 8), 1)
    return [{"image": image, "sem_seg": sem_seg[:size, :size].long()}]


def _worker(args) -> dict:
    """Build the model and time ``args.iters`` steps of ``args.worker`` after one warm-up."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _build_cfg(args)
    model = build_model(cfg)
    model.train()
    batch = _batch(args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if args.worker == "backbone":
        params = [p for p in model.backbone.parameters() if p.requires_grad]
        images = ((batch[0]["image"].float() - model.pixel_mean) / model.pixel_std).unsqueeze(0)

        def step():
            outputs = model.backbone(images)
            sum(o.sum() for o in outputs.values()).backward()

    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

        def step():
            optimizer.zero_grad(set_to_none=True)
            losses = model(batch)
            sum(losses.values()).backward()
            optimizer.step()

    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with EventStorage():
        for i in range(args.iters + 1):
            start = time.perf_counter()
            step()
            if i > 0:  # the first step warms up allocators and caches
                times.append(time.perf_counter() - start)
    return {
        "kind": args.worker,
        # The minimum is the least disturbed by other processes on a shared machine.
        "seconds": min(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "built_rss_mib": rss_built / 1024,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "threads": torch.get_num_threads(),
    }


def _run_worker(kind: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_vltseg_step", "--worker", kind]
    cmd += ["--size", str(args.size), "--iters", str(args.iters), "--arch", args.arch]
    cmd += ["--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, cwd=_REPO_ROOT, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="square crop size (pixels)")
    parser.add_argument("--iters", type=int, default=2, help="timed steps (fastest reported)")
    parser.add_argument("--arch", default="ViT-B-16", help="MODEL.VLT_BACKBONE.ARCH")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--worker", choices=["backbone", "step"], help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    """
    Run both measurements and print them with their ratio.

    Returns:
        dict: {"backbone": {...}, "step": {...}, "time_ratio": float, "memory_ratio": float}.
    """
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    backbone = _run_worker("backbone", args)
    step = _run_worker("step", args)
    result = {
        "backbone": backbone,
        "step": step,
        "time_ratio": step["seconds"] / backbone["seconds"],
        "memory_ratio": step["peak_rss_mib"] / backbone["peak_rss_mib"],
    }
    print(
        f"VLTSeg training step, {args.arch}{' (tiny)' if args.tiny else ''}, "
        f"{args.size}x{args.size}, batch 1, {step['threads']} CPU threads, fastest of "
        f"{args.iters} (load average {os.getloadavg()[0]:.1f})"
    )
    rows = (("backbone fwd+bwd (reference)", backbone), ("full step (fwd+bwd+AdamW)", step))
    for name, r in rows:
        print(
            f"  {name:30s} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mib']:8.0f} MiB "
            f"(after build {r['built_rss_mib']:.0f} MiB)   "
            f"trainable {r['trainable_params_m']:.1f} M"
        )
    print(
        f"  ratio step / backbone: time {result['time_ratio']:.2f}x, "
        f"peak memory {result['memory_ratio']:.2f}x"
    )
    return result


if __name__ == "__main__":
    main()
