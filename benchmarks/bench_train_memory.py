"""Peak memory of one VLTSeg optimizer step with gradient accumulation and gradient checkpointing.

Every variant trains on the same batch per optimizer step (``--batch`` images of ``--size`` x
``--size``) with VLT's step trainer (:class:`vlt_common.engine.trainer.VLTStepTrainer`) and AdamW:

* ``baseline``: one forward/backward pass of the whole batch;
* ``accumulation``: SOLVER.ACCUMULATION_STEPS = ``--accumulation`` passes of batch / steps images;
* ``checkpointing``: one pass with MODEL.VLT_BACKBONE.GRAD_CHECKPOINT (the trunk's activations
  are recomputed in backward);
* ``both``: the two together.

Each variant runs in its own subprocess, so that its peak is its own. On the CPU the peak is the
resident memory (``ru_maxrss``) and the printed "step" memory is the peak minus the memory after
the model was built (activations, gradients, optimizer state); with ``--device cuda`` it is
``torch.cuda.max_memory_allocated``::

    nice python -m benchmarks.bench_train_memory                       # ViT-B/16, 256 px, batch 4
    python -m benchmarks.bench_train_memory --device cuda --size 512 --batch 8
"""
import argparse
import json
import resource
from typing import List, Optional

from benchmarks.bench_vltseg_step import make_batch, vltseg_cfg
from benchmarks.workers import run_worker

VARIANTS = {  # name -> (accumulate, checkpoint)
    "baseline": (False, False),
    "accumulation": (True, False),
    "checkpointing": (False, True),
    "both": (True, True),
}


def _build_cfg(args, checkpoint: bool):
    cfg = vltseg_cfg(args.device, args.arch)
    cfg.MODEL.VLT_BACKBONE.GRAD_CHECKPOINT = checkpoint
    cfg.freeze()
    return cfg


def _worker(args) -> dict:
    """One optimizer step of variant ``args.worker``; its peak memory."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from vlt_common.engine.trainer import VLTStepTrainer

    accumulate, checkpoint = VARIANTS[args.worker]
    steps = args.accumulation if accumulate else 1
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _build_cfg(args, checkpoint)
    model = build_model(cfg)
    images = make_batch(args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, args.batch)
    per_pass = args.batch // steps
    passes = [images[i:i + per_pass] for i in range(0, args.batch, per_pass)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer = VLTStepTrainer(model, iter(passes), optimizer, accumulation_steps=steps)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        built = torch.cuda.memory_allocated()
    else:
        built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with EventStorage():
        trainer.run_step()
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "variant": args.worker,
        "passes": steps,
        "images_per_pass": per_pass,
        "peak_mib": peak / 2**20,
        "built_mib": built / 2**20,
        "step_mib": (peak - built) / 2**20,
    }


def _run_worker(variant: str, args) -> dict:
    return run_worker(
        "benchmarks.bench_train_memory",
        [variant, "--size", args.size, "--batch", args.batch, "--arch", args.arch,
         "--accumulation", args.accumulation, "--device", args.device, "--threads", args.threads],
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square crop size (pixels)")
    parser.add_argument("--batch", type=int, default=4, help="images per optimizer step")
    parser.add_argument("--accumulation", type=int, default=4, help="passes when accumulating")
    parser.add_argument("--arch", default="ViT-B-16", help="MODEL.VLT_BACKBONE.ARCH")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    """
    Measure every variant and print the table.

    Returns:
        dict: variant -> its measurement (see :func:`_worker`).
    """
    args = _parser().parse_args(argv)
    if args.batch % args.accumulation:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --accumulation")
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    results = {name: _run_worker(name, args) for name in VARIANTS}
    base = results["baseline"]["step_mib"]
    memory = "peak RSS" if args.device == "cpu" else "max_memory_allocated"
    print(f"VLTSeg optimizer step, {args.arch}, {args.size}x{args.size}, batch {args.batch}, "
          f"AdamW, on {args.device} ({memory}; step = peak - after build)")
    for name, r in results.items():
        print(f"  {name:14s} {r['passes']} x {r['images_per_pass']} images   peak "
              f"{r['peak_mib']:7.0f} MiB   step {r['step_mib']:7.0f} MiB "
              f"({100 * r['step_mib'] / base:5.1f} % of baseline)")
    return results


if __name__ == "__main__":
    main()
