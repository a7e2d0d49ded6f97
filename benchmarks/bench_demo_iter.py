"""Iteration time of the tiny SynthDG demo (``configs/vltseg_tiny_synthdg.yaml``) on the CPU or
a CUDA GPU: forward, backward and the trainer's optimizer on random batches of the demo's size
(SOLVER.IMS_PER_BATCH crops of INPUT.CROP.SIZE), data loading excluded. On CUDA the steps run
under bf16 autocast (``--amp off`` for fp32), each timed between ``torch.cuda.synchronize()``
calls; the median after a warm-up is printed with the host-device synchronizations of a step::

    python -m benchmarks.bench_demo_iter                 # CPU
    python -m benchmarks.bench_demo_iter --device cuda   # GPU
"""
import argparse
import contextlib
import statistics
import time
from pathlib import Path
from typing import List, Optional

from benchmarks.bench_vltseg_step import count_syncs, make_batch

_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vltseg_tiny_synthdg.yaml"


def main(argv: Optional[List[str]] = None) -> dict:
    """
    Returns:
        dict: {"ms_per_iter": median, "fastest_ms": float, "syncs_per_step": int or None}.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--iters", type=int, default=0, help="timed steps (0: 5 CPU, 50 CUDA)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps (0: 2 CPU, 10 CUDA)")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    args = parser.parse_args(argv)

    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import vltseg  # noqa: F401  (registers VLTSeg's config keys and model)
    from vlt_common.engine.defaults import get_vlt_cfg
    from vlt_common.solver import build_optimizer

    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
    iters = args.iters or (50 if cuda else 5)
    warmup = args.warmup or (10 if cuda else 2)
    torch.manual_seed(0)
    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(_CONFIG))
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    batch = make_batch(
        tuple(cfg.INPUT.CROP.SIZE), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.SOLVER.IMS_PER_BATCH
    )
    bf16 = cuda if args.amp == "auto" else args.amp == "bf16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        amp = torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else None
        with amp or contextlib.nullcontext():
            losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    times = []
    with EventStorage():
        for _ in range(warmup):
            step()
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        syncs = count_syncs(step, torch) if cuda else None
    result = {
        "ms_per_iter": 1e3 * statistics.median(times),
        "fastest_ms": 1e3 * min(times),
        "syncs_per_step": syncs,
    }
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"tiny SynthDG demo iteration ({cfg.SOLVER.IMS_PER_BATCH} x {tuple(cfg.INPUT.CROP.SIZE)}, "
        f"{where}, {'bf16 autocast' if bf16 else 'fp32'}): median {result['ms_per_iter']:.1f} ms "
        f"(fastest {result['fastest_ms']:.1f} ms) of {iters} after {warmup} warm-up"
        + (f", {syncs} host-device synchronizations per step" if cuda else "")
    )
    return result


if __name__ == "__main__":
    main()
