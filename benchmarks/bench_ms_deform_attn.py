"""Multi-scale deformable attention, forward + backward: VLT's ``ms_deform_attn`` against two
``grid_sample`` implementations of the same op, measured in the same run.

Sizes of a 512x512 crop in Mask2Former's pixel decoder: levels at strides 8/16/32 (64x64, 32x32,
16x16), 8 heads of 32 channels, 4 points per head and level, one query per pixel (5376), batch
1 and 2. Sampling locations are what a deformable layer produces early in training: each
pixel's center plus Deformable DETR's initial offsets (1..4 px along the head's direction) plus
Gaussian noise of 1 px.

References:
  * plain: one ``grid_sample`` per level, head and point, weighted sums accumulated (the
    straightforward port of the op).
  * official-pytorch: official Mask2Former's PyTorch path (``ms_deform_attn_core_pytorch``):
    one ``grid_sample`` per level with the heads folded into the batch, stacked, one weighted
    sum.

Each repeat times every implementation once, interleaved; the table shows the fastest repeat
(the least disturbed by other processes), the median, and the process CPU time of the fastest
repeat (all threads; on a shared machine it moves less than wall time, but it counts spinning
threads too). The speed-up compares fastest repeats. The max differences are taken against
the plain reference (output, and the gradients of value, sampling locations and attention
weights, relative to their largest magnitude)::

    python -m benchmarks.bench_ms_deform_attn
    python -m benchmarks.bench_ms_deform_attn --batch 1 --repeats 3 --threads 1
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from vltseg.modeling import ms_deform_attn, ms_deform_attn_grid_sample

SHAPES_512 = ((64, 64), (32, 32), (16, 16))


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


IMPLEMENTATIONS: Dict[str, Callable] = {
    "plain": reference_plain,
    "official-pytorch": reference_per_level,
    "vlt": ms_deform_attn,
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(fn, inputs, grad_output):
    value, shapes, starts, locations, attention = inputs
    out = fn(value, shapes, starts, locations, attention)
    grads = torch.autograd.grad(out, (value, locations, attention), grad_output)
    return out.detach(), grads


def bench(batch: int, repeats: int, device: str = "cpu") -> Dict[str, dict]:
    """Time forward + backward of every implementation; returns name -> stats."""
    inputs = make_inputs(batch, device=device)
    grad_output = torch.randn(batch, inputs[0].shape[1], 8 * 32, device=device)
    dev = inputs[0].device
    times = {name: [] for name in IMPLEMENTATIONS}
    cpu_times = {name: [] for name in IMPLEMENTATIONS}
    results = {}
    for name, fn in IMPLEMENTATIONS.items():  # warm-up, and the values compared below
        results[name] = _run(fn, inputs, grad_output)
    for _ in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            _sync(dev)
            start, cpu_start = time.perf_counter(), time.process_time()
            _run(fn, inputs, grad_output)
            _sync(dev)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    ref_out, ref_grads = results["plain"]
    stats = {}
    for name, (out, grads) in results.items():
        diffs = [float((out - ref_out).abs().max())]
        diffs += [float((g - r).abs().max() / r.abs().max()) for g, r in zip(grads, ref_grads)]
        fastest = min(range(repeats), key=times[name].__getitem__)
        stats[name] = {
            "min_s": times[name][fastest],
            "median_s": statistics.median(times[name]),
            "cpu_s": cpu_times[name][fastest],
            "max_diff": diffs,
        }
    return stats


def main(argv: Optional[List[str]] = None) -> Dict[int, Dict[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"ms_deform_attn forward+backward, levels {list(SHAPES_512)}, 8 heads x 32 ch, 4 points, "
        f"queries = all pixels; device {args.device}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats"
    )
    header = (
        f"{'batch':>5} {'implementation':<17} {'min ms':>8} {'median ms':>9} {'cpu ms':>8} "
        f"{'vlt speed-up':>12}  max diff vs plain (out abs; grad value/loc/attn rel)"
    )
    print(header)
    all_stats = {}
    for batch in args.batch:
        stats = bench(batch, args.repeats, args.device)
        ours = stats["vlt"]["min_s"]
        for name, s in stats.items():
            diff = "  ".join(f"{d:.1e}" for d in s["max_diff"])
            print(
                f"{batch:>5} {name:<17} {s['min_s'] * 1e3:>8.1f} {s['median_s'] * 1e3:>9.1f} "
                f"{s['cpu_s'] * 1e3:>8.1f} {s['min_s'] / ours:>11.2f}x  {diff}"
            )
        all_stats[batch] = stats
    return all_stats


if __name__ == "__main__":
    main()
