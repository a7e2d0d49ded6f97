"""Multi-scale deformable attention, forward and forward + backward: VLT's ``ms_deform_attn``
against two ``grid_sample`` implementations of the same op, measured in the same run.

Sizes of a crop in Mask2Former's pixel decoder: levels at strides 8/16/32 (64x64, 32x32, 16x16 for
a 512x512 crop; 128x128, 64x64, 32x32 for 1024x1024), 8 heads of 32 channels, 4 points per head
and level, one query per pixel. Sampling locations are what a deformable layer produces early in
training: each pixel's center plus Deformable DETR's initial offsets (1..4 px along the head's
direction) plus Gaussian noise of 1 px.

Implementations:
  * plain: one ``grid_sample`` per level, head and point, weighted sums accumulated (the
    straightforward port of the op).
  * official-pytorch: official Mask2Former's PyTorch path (``ms_deform_attn_core_pytorch``):
    one ``grid_sample`` per level with the heads folded into the batch, stacked, one weighted
    sum (VLT's ONNX export path).
  * vlt: ``ms_deform_attn`` as the model calls it: the embedding_bag path on CPU, the Triton
    kernels on CUDA.
  * vlt-embedding-bag (CUDA only): the CPU path run on the GPU, for comparison.

Inputs are float32 on every device: the trainer's bf16 autocast does not reach this op, because
the pixel decoder runs its deformable encoder with autocast disabled, as official Mask2Former
does. Each repeat times every implementation once, interleaved (CUDA: synchronized before and
after); the table shows the fastest repeat (the least disturbed by other processes), the median,
the process CPU time of the fastest forward + backward (CPU only: all threads; on a shared machine
it moves less than wall time, but counts spinning threads too), and on CUDA the peak memory the
forward + backward allocates on top of its inputs (``max_memory_allocated``). Speed-ups compare
fastest repeats with ``vlt``. The max differences are relative (max abs difference / max abs of
the plain reference) for the output and the gradients of value, sampling locations and attention
weights::

    python -m benchmarks.bench_ms_deform_attn
    python -m benchmarks.bench_ms_deform_attn --batch 1 --repeats 3 --threads 1
    python -m benchmarks.bench_ms_deform_attn --device cuda   # crops 512 and 1024, batch 2 and 8
"""
import argparse
import statistics
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from vltseg.modeling import ms_deform_attn, ms_deform_attn_grid_sample

SHAPES_512 = ((64, 64), (32, 32), (16, 16))  # levels of a 512x512 crop


def make_inputs(
    batch: int,
    shapes: Sequence[Tuple[int, int]] = SHAPES_512,
    heads: int = 8,
    head_dim: int = 32,
    points: int = 4,
    seed: int = 0,
    device: str = "cpu",
):
    """
    Returns:
        tuple: value [B, S, nH, dH], spatial_shapes [L, 2], level_start_index [L],
        sampling_locations [B, S, nH, L, nP, 2], attention_weights [B, S, nH, L, nP]; the
        floating-point ones require grad.
    """
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    sizes = [h * w for h, w in shapes]
    S = sum(sizes)
    value = torch.randn(batch, S, heads, head_dim, generator=g)
    centers = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        centers.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    centers = torch.cat(centers)  # [S, 2]
    angles = torch.arange(heads) * (2 * torch.pi / heads)
    direction = torch.stack([angles.cos(), angles.sin()], -1)
    direction = direction / direction.abs().max(-1, keepdim=True)[0]
    ring = direction[:, None, :] * torch.arange(1, points + 1)[None, :, None]  # [nH, nP, 2]
    offsets = ring[None, None, :, None] + torch.randn(batch, S, heads, L, points, 2, generator=g)
    normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)  # [L, 2]
    locations = centers[None, :, None, None, None] + offsets / normalizer[:, None, :]
    attention = torch.randn(batch, S, heads, L * points, generator=g).softmax(-1)
    attention = attention.view(batch, S, heads, L, points)
    spatial_shapes = torch.tensor(shapes)
    starts = torch.tensor([sum(sizes[:i]) for i in range(L)])
    tensors = [t.to(device).requires_grad_() for t in (value, locations, attention)]
    return tensors[0], spatial_shapes, starts, tensors[1], tensors[2]


def reference_plain(value, spatial_shapes, level_start_index, locations, attention):
    """One grid_sample call per (level, head, point); same signature as ms_deform_attn."""
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    out = value.new_zeros(B, M, D, Lq)
    for lvl, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        level = value[:, start : start + h * w]
        for m in range(M):
            v = level[:, :, m].transpose(1, 2).reshape(B, D, h, w)
            for p in range(P):
                grid = 2 * locations[:, :, m, lvl, p, None, :] - 1  # [B, Lq, 1, 2]
                sampled = F.grid_sample(v, grid, mode="bilinear", align_corners=False)[..., 0]
                out[:, m] += sampled * attention[:, None, :, m, lvl, p]
    return out.permute(0, 3, 1, 2).reshape(B, Lq, M * D)


# Official Mask2Former's PyTorch formulation (also VLT's ONNX export path).
reference_per_level = ms_deform_attn_grid_sample


def _embedding_bag(value, spatial_shapes, level_start_index, locations, attention):
    return ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, attention, backend="embedding_bag"
    )


def implementations(device: torch.device) -> Dict[str, Callable]:
    """Name -> function with ms_deform_attn's signature, for ``device``."""
    impls = {"plain": reference_plain, "official-pytorch": reference_per_level}
    impls["vlt"] = ms_deform_attn
    if device.type == "cuda":
        impls["vlt-embedding-bag"] = _embedding_bag
    return impls


def crop_shapes(crop: int) -> Tuple[Tuple[int, int], ...]:
    """Pixel-decoder levels (strides 8, 16, 32) of a square crop."""
    return tuple((crop // s, crop // s) for s in (8, 16, 32))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(fn, inputs, grad_output):
    with torch.no_grad():
        return fn(*inputs)


def _forward_backward(fn, inputs, grad_output):
    value, shapes, starts, locations, attention = inputs
    out = fn(value, shapes, starts, locations, attention)
    grads = torch.autograd.grad(out, (value, locations, attention), grad_output)
    return out.detach(), grads


def _time(run, dev) -> Tuple[float, float]:
    """Wall and process CPU seconds of ``run()``, synchronized on CUDA."""
    _sync(dev)
    start, cpu_start = time.perf_counter(), time.process_time()
    run()
    _sync(dev)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _peak_bytes(run, dev) -> int:
    """Memory ``run()`` allocates on the CUDA device on top of what is allocated before."""
    if dev.type != "cuda":
        return 0
    _sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    run()
    _sync(dev)
    return torch.cuda.max_memory_allocated(dev) - base


def bench(batch: int, repeats: int, device: str = "cpu", crop: int = 512) -> Dict[str, dict]:
    """Time forward and forward + backward of every implementation; returns name -> stats."""
    inputs = make_inputs(batch, shapes=crop_shapes(crop), device=device)
    dev = inputs[0].device
    grad_output = torch.randn(batch, inputs[0].shape[1], 8 * 32).to(dev)
    impls = implementations(dev)
    results, peaks = {}, {}
    for name, fn in impls.items():  # warm-up (compiles Triton), and the values compared below
        _forward(fn, inputs, grad_output)
        results[name] = _forward_backward(fn, inputs, grad_output)
        peaks[name] = _peak_bytes(partial(_forward_backward, fn, inputs, grad_output), dev)
    times = {(name, mode): [] for name in impls for mode in ("fwd", "fwd_bwd")}
    cpu_times = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            times[name, "fwd"].append(_time(partial(_forward, fn, inputs, grad_output), dev)[0])
            wall, cpu = _time(partial(_forward_backward, fn, inputs, grad_output), dev)
            times[name, "fwd_bwd"].append(wall)
            cpu_times[name].append(cpu)
    ref_out, ref_grads = results["plain"]
    stats = {}
    for name, (out, grads) in results.items():
        diffs = [float((a - r).abs().max() / r.abs().max()) for a, r in zip(
            (out, *grads), (ref_out, *ref_grads)
        )]  # fmt: skip
        fastest = min(range(repeats), key=times[name, "fwd_bwd"].__getitem__)
        stats[name] = {
            "fwd_min_s": min(times[name, "fwd"]),
            "fwd_median_s": statistics.median(times[name, "fwd"]),
            "min_s": times[name, "fwd_bwd"][fastest],
            "median_s": statistics.median(times[name, "fwd_bwd"]),
            "cpu_s": cpu_times[name][fastest],
            "peak_bytes": peaks[name],
            "max_diff": diffs,
        }
    return stats


def main(argv: Optional[List[str]] = None) -> Dict[Tuple[int, int], Dict[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, nargs="+", help="default: 1 2 (cpu), 2 8 (cuda)")
    parser.add_argument("--crop", type=int, nargs="+", help="default: 512 (cpu), 512 1024 (cuda)")
    parser.add_argument("--repeats", type=int, help="default: 5 (cpu), 20 (cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available")
    batches = args.batch or ([2, 8] if cuda else [1, 2])
    crops = args.crop or ([512, 1024] if cuda else [512])
    repeats = args.repeats or (20 if cuda else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(args.device) if cuda else (
        f"cpu, {torch.get_num_threads()} threads"
    )  # fmt: skip
    print(
        f"ms_deform_attn forward and forward+backward, levels at strides 8/16/32, 8 heads x 32 "
        f"ch, 4 points, queries = all pixels, float32; {where}, {repeats} repeats"
    )
    extra = "peak MiB" if cuda else "cpu ms"
    print(
        f"{'crop':>4} {'batch':>5} {'implementation':<17} {'fwd min':>8} {'fwd med':>8} "
        f"{'f+b min':>8} {'f+b med':>8} {extra:>8} {'vlt speed-up':>12}  "
        "max rel diff vs plain (out; grad value/loc/attn)"
    )
    all_stats = {}
    for crop in crops:
        for batch in batches:
            stats = bench(batch, repeats, args.device, crop)
            ours = stats["vlt"]
            for name, s in stats.items():
                diff = "  ".join(f"{d:.1e}" for d in s["max_diff"])
                last = s["peak_bytes"] / 2**20 if cuda else s["cpu_s"] * 1e3
                fwd_ratio = s["fwd_min_s"] / ours["fwd_min_s"]
                speed = f"{fwd_ratio:.2f}/{s['min_s'] / ours['min_s']:.2f}x"
                print(
                    f"{crop:>4} {batch:>5} {name:<17} {s['fwd_min_s'] * 1e3:>8.2f} "
                    f"{s['fwd_median_s'] * 1e3:>8.2f} {s['min_s'] * 1e3:>8.2f} "
                    f"{s['median_s'] * 1e3:>8.2f} {last:>8.1f} {speed:>12}  {diff}"
                )
            all_stats[crop, batch] = stats
    print("times in ms; speed-up = this implementation's time / vlt's (forward / fwd+bwd)")
    return all_stats


if __name__ == "__main__":
    main()
