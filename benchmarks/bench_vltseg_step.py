"""Time and peak memory of one VLTSeg training step, on the CPU or a CUDA GPU.

The model is the paper's: a ViT-B/16 backbone (random weights; timing does not depend on them)
with the full Mask2Former head (6-layer MSDeformAttn pixel decoder, 9-layer decoder, 100
queries, 12544 matching points), on square crops. A step is what the trainer does: forward,
backward and the optimizer of ``vlt_common.solver.build_optimizer`` (AdamW, fused on CUDA, with
the config's full-model gradient clipping), on CUDA under bf16 autocast. The reference, measured
in the same run, is the backbone alone (forward + backward of the sum of its outputs), so the
printed ratio says what the head and the losses add on top of the encoder, independently of how
fast the machine is.

On CUDA every timed step is bracketed by ``torch.cuda.synchronize()``; the median of the repeats
after the warm-up is reported with images/s, the peak allocated GPU memory, the backbone's
model-FLOPs utilization (fvcore FLOPs of the backbone's forward, x3 for forward + backward, over
the card's dense bf16 peak) and, for the step, the host-device synchronizations (counted with
``torch.cuda.set_sync_debug_mode("warn")``) and the kernel launches / memory copies per step
(profiler). Each measurement runs in its own subprocess, so that its peak memory is its own::

    python -m benchmarks.bench_vltseg_step                  # CPU, the paper's sizes, batch 1
    python -m benchmarks.bench_vltseg_step --device cuda --arch EVA02-L-14 --batch 8
    python -m benchmarks.bench_vltseg_step --size 128 --iters 1 --tiny   # a quick smoke run
"""
import argparse
import json
import os
import resource
import statistics
import time
import warnings
from typing import List, Optional

from benchmarks.workers import REPO_ROOT, run_worker

_CONFIG = REPO_ROOT / "configs" / "Base-VLTSeg.yaml"

# Dense bf16 peak of known cards (FLOP/s, one multiply-add = 2 flops), for the MFU.
_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def vltseg_cfg(device: str, arch: str):
    """Base-VLTSeg.yaml on ``device`` with a randomly initialized ``arch`` trunk and no drop path
    (not frozen): the model the benchmarks time."""
    import vltseg  # noqa: F401  (registers VLTSeg's config keys and model)
    from vlt_common.engine.defaults import get_vlt_cfg

    cfg = get_vlt_cfg()
    cfg.merge_from_file(str(_CONFIG))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.VLT_BACKBONE.ARCH = arch
    cfg.MODEL.VLT_BACKBONE.PRETRAINED = ""
    cfg.MODEL.VLT_BACKBONE.DROP_PATH_RATE = 0.0
    return cfg


def _build_cfg(args):
    cfg = vltseg_cfg(args.device, args.arch)
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


def make_batch(size, num_classes: int, batch_size: int):
    """CPU inputs as the data loader hands them out (the model moves them); ``size`` is an int
    (square) or (height, width)."""
    import torch

    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        # A blocky label map (8x8 cells of random classes): a realistic number of masks.
        cells = torch.randint(0, num_classes, (8, 8), generator=generator)
        sem_seg = cells.repeat_interleave(-(-height // 8), 0)
        sem_seg = sem_seg.repeat_interleave(-(-width // 8), 1)[:height, :width]
        inputs.append({"image": image, "sem_seg": sem_seg.long()})
    return inputs


def _peak_flops(args, torch) -> Optional[float]:
    if args.peak_tflops > 0:
        return args.peak_tflops * 1e12
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def count_syncs(step, torch) -> int:
    """Host-device synchronizations of one step, as torch.cuda's sync debug mode reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def _count_launches(step, torch) -> dict:
    """Kernel launches, memory copies and explicit synchronizations of one step (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    counts = {"launches": 0, "memcpy": 0, "synchronize": 0}
    for event in prof.events():
        if event.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"):
            counts["launches"] += 1
        elif event.name.startswith("cudaMemcpy"):
            counts["memcpy"] += 1
        elif event.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize"):
            counts["synchronize"] += 1
    return counts


def _worker(args) -> dict:
    """Build the model and time ``args.iters`` steps of ``args.worker`` after the warm-up."""
    import contextlib

    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from vlt_common.solver import build_optimizer
    from vlt_common.utils.model_stats import count_flops

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    cfg = _build_cfg(args)
    model = build_model(cfg)
    model.train()
    batch = make_batch(args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, args.batch)
    bf16 = cuda if args.amp == "auto" else args.amp == "bf16"

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)

    flops = None
    if args.worker == "backbone":
        params = [p for p in model.backbone.parameters() if p.requires_grad]
        images = torch.stack([model._normalize(x["image"]) for x in batch])
        with torch.no_grad():
            fwd, _ = count_flops(model.backbone.eval(), (images[:1],))
        model.backbone.train()
        # fvcore counts multiply-adds; forward + backward = 3 forwards, 2 flops per MAC.
        flops = 2 * 3 * fwd * args.batch

        def step():
            with autocast():
                outputs = model.backbone(images)
            sum(o.float().sum() for o in outputs.values()).backward()

    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(cfg, model)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                losses = model(batch)
            sum(losses.values()).backward()
            optimizer.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, extra = [], {}
    with EventStorage():
        for _ in range(args.warmup):  # allocators, caches, cuDNN / Triton autotuning
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.iters):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        if cuda and args.worker == "step":
            extra["syncs_per_step"] = count_syncs(step, torch)
            extra.update(_count_launches(step, torch))
    seconds = statistics.median(times)
    result = {
        "kind": args.worker,
        "seconds": seconds,
        "fastest": min(times),
        "images_per_s": args.batch / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "built_rss_mib": rss_built / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        **extra,
    }
    if flops is not None:
        result["tflops_per_s"] = flops / seconds / 1e12
        peak = _peak_flops(args, torch)
        result["mfu"] = flops / seconds / peak if peak else None
    return result


def _run_worker(kind: str, args) -> dict:
    argv = [kind, "--size", args.size, "--iters", args.iters, "--arch", args.arch,
            "--threads", args.threads, "--device", args.device, "--batch", args.batch,
            "--warmup", args.warmup, "--amp", args.amp, "--peak-tflops", args.peak_tflops]
    return run_worker("benchmarks.bench_vltseg_step", argv + (["--tiny"] if args.tiny else []))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, default=512, help="square crop size (pixels)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--iters", type=int, default=0, help="timed steps (0: 2 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps (0: 1 CPU, 5 CUDA)")
    parser.add_argument(
        "--amp", choices=["auto", "bf16", "off"], default="auto", help="auto: bf16 on CUDA only"
    )
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense bf16 peak for the MFU (0: known cards by name)")
    parser.add_argument("--arch", default="ViT-B-16", help="MODEL.VLT_BACKBONE.ARCH")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--worker", choices=["backbone", "step"], help=argparse.SUPPRESS)
    return parser


def _fmt(value, spec, unit=""):
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def main(argv: Optional[List[str]] = None) -> dict:
    """
    Run both measurements and print them with their ratios.

    Returns:
        dict: {"backbone": {...}, "step": {...}, "time_ratio": float, "memory_ratio": float}.
    """
    args = _parser().parse_args(argv)
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
    args.iters = args.iters or (20 if cuda else 2)
    args.warmup = args.warmup or (5 if cuda else 1)
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    backbone = _run_worker("backbone", args)
    step = _run_worker("step", args)
    memory = "peak_gpu_mib" if cuda else "peak_rss_mib"
    result = {
        "backbone": backbone,
        "step": step,
        "time_ratio": step["seconds"] / backbone["seconds"],
        "memory_ratio": step[memory] / backbone[memory],
    }
    where = step["device"] if cuda else f"{step['threads']} CPU threads"
    precision = "bf16 autocast" if (cuda and args.amp == "auto") or args.amp == "bf16" else "fp32"
    print(
        f"VLTSeg training step, {args.arch}{' (tiny)' if args.tiny else ''}, "
        f"{args.size}x{args.size}, batch {args.batch}, {where}, {precision}, median of "
        f"{args.iters} after {args.warmup} warm-up (load average {os.getloadavg()[0]:.1f})"
    )
    rows = (("backbone fwd+bwd (reference)", backbone), ("full step (fwd+bwd+AdamW)", step))
    for name, r in rows:
        mem = (
            f"peak GPU {r['peak_gpu_mib']:8.0f} MiB"
            if cuda
            else f"peak RSS {r['peak_rss_mib']:8.0f} MiB (after build {r['built_rss_mib']:.0f} MiB)"
        )
        print(
            f"  {name:30s} {r['seconds'] * 1e3:9.1f} ms  {r['images_per_s']:7.2f} img/s   {mem}"
            f"   trainable {r['trainable_params_m']:.1f} M"
        )
    print(
        f"  backbone: {_fmt(backbone.get('tflops_per_s'), '.3f', ' TFLOP/s')}, "
        f"MFU {_fmt(backbone.get('mfu') and 100 * backbone['mfu'], '.1f', '%')}"
    )
    if cuda:
        print(
            f"  step: {step['syncs_per_step']} host-device synchronizations, "
            f"{step['launches']} kernel launches, {step['memcpy']} memory copies, "
            f"{step['synchronize']} explicit synchronize calls"
        )
    print(
        f"  ratio step / backbone: time {result['time_ratio']:.2f}x, "
        f"peak memory {result['memory_ratio']:.2f}x"
    )
    return result


if __name__ == "__main__":
    main()
