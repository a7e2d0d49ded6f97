"""
Multi-scale deformable attention as Triton kernels: the GPU path of :func:`ms_deform_attn`.

Same semantics as :func:`vltseg.modeling.ms_deform_attn` (and the official CUDA op): bilinear
sampling with ``align_corners=False`` (pixel = location * size - 0.5), zeros outside each level,
a weighted sum over levels and points; a non-finite location makes its (query, head) output NaN.

Design (the official CUDA kernel's, tiled): one program per block of ``BLOCK_Q`` queries of one
(image, head); it loops over levels and points, and for every sample gathers the four corner rows
of the value map (``head_dim`` contiguous channels each, masked when outside the level) and
accumulates ``attention x bilinear weight x row`` in fp32. The backward program re-reads the same
corners: the gradients of locations and attention weights come from the four dot products
``<grad_output, corner row>`` (each sample is owned by one program, so they are plain stores),
and the value gradient is scattered with fp32 atomic adds.

Dtypes: value, locations and attention weights may have any floating dtype (each may differ, as
under autocast); the kernels load them as they are and compute in fp32. The output has the
promoted dtype of the three inputs; every gradient has its input's dtype (the value gradient is
accumulated in an fp32 buffer and cast at the end).

Devices: CUDA tensors run the compiled kernels. Under Triton's interpreter (``TRITON_INTERPRET=1``
in the environment before Triton is imported: Triton reads it once, when a kernel and its
standard library such as ``tl.sum`` are decorated) the same kernels run on CPU tensors, which is
how tests/vltseg/test_ms_deform_attn_triton.py checks them without a GPU (in a subprocess, so
the rest of the test session keeps compiled Triton). The interpreter is slow: the CPU path of
the op is :func:`vltseg.modeling.ms_deform_attn`.
"""
import functools
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ms_deform_attn_inputs import ShapesLike, check_inputs

__all__ = ["ms_deform_attn_triton"]


@triton.jit
def _bilinear_corners(x, y, H, W, q_mask):
    """
    Where a sample falls on a level: the top-left corner (x0, y0), the fractions (fx, fy) and
    which of the four corners lie inside the level (rows outside ``q_mask`` are never inside).
    Locations are normalized to [0, 1]; pixel = loc * size - 0.5, as grid_sample computes it
    with align_corners=False. Also returns whether the location is finite.
    """
    px = (2.0 * x - 1.0 + 1.0) * (W.to(tl.float32) / 2.0) - 0.5
    py = (2.0 * y - 1.0 + 1.0) * (H.to(tl.float32) / 2.0) - 0.5
    finite = (tl.abs(px) < float("inf")) & (tl.abs(py) < float("inf"))
    # Clamping to [-2, size + 1] keeps which corners are inside (none, beyond -1 or size) and
    # makes the integer conversion safe for far-away or non-finite points.
    px = tl.where(finite, tl.minimum(tl.maximum(px, -2.0), W + 1.0), -2.0)
    py = tl.where(finite, tl.minimum(tl.maximum(py, -2.0), H + 1.0), -2.0)
    x0f = tl.floor(px)
    y0f = tl.floor(py)
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x0 >= -1) & (x0 < W - 1)
    in_y0 = q_mask & (y0 >= 0) & (y0 < H)
    in_y1 = q_mask & (y0 >= -1) & (y0 < H - 1)
    return finite, x0, y0, px - x0f, py - y0f, in_x0, in_x1, in_y0, in_y1


@triton.jit
def _forward_kernel(
    value_ptr,  # [B, S, M, D], contiguous
    level_ptr,  # [L, 3] int32: H, W, start
    loc_ptr,  # [B, Lq, M, L, P, 2], contiguous
    attn_ptr,  # [B, Lq, M, L, P], contiguous
    out_ptr,  # [B, Lq, M, D], contiguous
    S,
    Lq,
    M,
    D,
    L: tl.constexpr,
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(1) // M
    m = tl.program_id(1) % M
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_mask = q < Lq
    d_mask = d < D
    # First sample of every (b, q, m) in the [B * Lq * M, L * P] sample layout.
    sample = ((b * Lq + q) * M + m).to(tl.int64) * (L * P)
    value_base = value_ptr + (b.to(tl.int64) * S * M + m) * D
    row_stride = M * D
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    bad = tl.zeros([BLOCK_Q], dtype=tl.int1)
    for lvl in tl.static_range(L):
        H = tl.load(level_ptr + 3 * lvl)
        W = tl.load(level_ptr + 3 * lvl + 1)
        start = tl.load(level_ptr + 3 * lvl + 2)
        for p in tl.static_range(P):
            s = sample + lvl * P + p
            x = tl.load(loc_ptr + 2 * s, mask=q_mask, other=0.0).to(tl.float32)
            y = tl.load(loc_ptr + 2 * s + 1, mask=q_mask, other=0.0).to(tl.float32)
            a = tl.load(attn_ptr + s, mask=q_mask, other=0.0).to(tl.float32)
            finite, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1 = _bilinear_corners(
                x, y, H, W, q_mask
            )
            bad = bad | ~finite
            row = start + y0 * W + x0  # top-left corner; masked where outside
            ptr = value_base + row[:, None] * row_stride + d[None, :]
            dm = d_mask[None, :]
            v00 = tl.load(ptr, mask=(in_y0 & in_x0)[:, None] & dm, other=0.0).to(tl.float32)
            v01 = tl.load(ptr + row_stride, mask=(in_y0 & in_x1)[:, None] & dm, other=0.0)
            v10 = tl.load(ptr + W * row_stride, mask=(in_y1 & in_x0)[:, None] & dm, other=0.0)
            v11 = tl.load(
                ptr + (W + 1) * row_stride, mask=(in_y1 & in_x1)[:, None] & dm, other=0.0
            )
            top = v00 * (1.0 - fx)[:, None] + v01.to(tl.float32) * fx[:, None]
            bottom = v10.to(tl.float32) * (1.0 - fx)[:, None] + v11.to(tl.float32) * fx[:, None]
            acc += a[:, None] * (top * (1.0 - fy)[:, None] + bottom * fy[:, None])
    acc = tl.where(bad[:, None], float("nan"), acc)
    out_offset = ((b * Lq + q) * M + m).to(tl.int64) * D
    out_ptrs = out_ptr + out_offset[:, None] + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _backward_kernel(
    value_ptr,  # [B, S, M, D], contiguous
    level_ptr,  # [L, 3] int32: H, W, start
    loc_ptr,  # [B, Lq, M, L, P, 2], contiguous
    attn_ptr,  # [B, Lq, M, L, P], contiguous
    grad_out_ptr,  # [B, Lq, M, D], contiguous
    grad_value_ptr,  # [B, S, M, D], fp32, zero-initialized (atomic adds)
    grad_loc_ptr,  # [B, Lq, M, L, P, 2], fp32
    grad_attn_ptr,  # [B, Lq, M, L, P], fp32
    S,
    Lq,
    M,
    D,
    L: tl.constexpr,
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(1) // M
    m = tl.program_id(1) % M
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_mask = q < Lq
    d_mask = d < D
    sample = ((b * Lq + q) * M + m).to(tl.int64) * (L * P)
    base = (b.to(tl.int64) * S * M + m) * D
    value_base = value_ptr + base
    grad_value_base = grad_value_ptr + base
    row_stride = M * D
    out_offset = ((b * Lq + q) * M + m).to(tl.int64) * D
    g = tl.load(
        grad_out_ptr + out_offset[:, None] + d[None, :],
        mask=q_mask[:, None] & d_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(level_ptr + 3 * lvl)
        W = tl.load(level_ptr + 3 * lvl + 1)
        start = tl.load(level_ptr + 3 * lvl + 2)
        for p in tl.static_range(P):
            s = sample + lvl * P + p
            x = tl.load(loc_ptr + 2 * s, mask=q_mask, other=0.0).to(tl.float32)
            y = tl.load(loc_ptr + 2 * s + 1, mask=q_mask, other=0.0).to(tl.float32)
            a = tl.load(attn_ptr + s, mask=q_mask, other=0.0).to(tl.float32)
            _, x0, y0, fx, fy, in_x0, in_x1, in_y0, in_y1 = _bilinear_corners(x, y, H, W, q_mask)
            m00 = (in_y0 & in_x0)[:, None] & d_mask[None, :]
            m01 = (in_y0 & in_x1)[:, None] & d_mask[None, :]
            m10 = (in_y1 & in_x0)[:, None] & d_mask[None, :]
            m11 = (in_y1 & in_x1)[:, None] & d_mask[None, :]
            off = (start + y0 * W + x0)[:, None] * row_stride + d[None, :]
            o01 = off + row_stride
            o10 = off + W * row_stride
            o11 = o10 + row_stride
            # <grad_output, corner row> for the four corners (zero outside the level).
            dot00 = tl.sum(g * tl.load(value_base + off, mask=m00, other=0.0).to(tl.float32), 1)
            dot01 = tl.sum(g * tl.load(value_base + o01, mask=m01, other=0.0).to(tl.float32), 1)
            dot10 = tl.sum(g * tl.load(value_base + o10, mask=m10, other=0.0).to(tl.float32), 1)
            dot11 = tl.sum(g * tl.load(value_base + o11, mask=m11, other=0.0).to(tl.float32), 1)
            wx0 = 1.0 - fx
            wy0 = 1.0 - fy
            top = wx0 * dot00 + fx * dot01
            bottom = wx0 * dot10 + fx * dot11
            tl.store(grad_attn_ptr + s, wy0 * top + fy * bottom, mask=q_mask)
            # d(pixel)/d(location) is the level size (W along x, H along y).
            gx = a * (wy0 * (dot01 - dot00) + fy * (dot11 - dot10)) * W.to(tl.float32)
            gy = a * (bottom - top) * H.to(tl.float32)
            tl.store(grad_loc_ptr + 2 * s, gx, mask=q_mask)
            tl.store(grad_loc_ptr + 2 * s + 1, gy, mask=q_mask)
            # grad_value[corner] += attention x bilinear weight x grad_output (fp32 atomics).
            ay0 = a * wy0
            ay1 = a * fy
            tl.atomic_add(grad_value_base + off, (ay0 * wx0)[:, None] * g, mask=m00, sem="relaxed")
            tl.atomic_add(grad_value_base + o01, (ay0 * fx)[:, None] * g, mask=m01, sem="relaxed")
            tl.atomic_add(grad_value_base + o10, (ay1 * wx0)[:, None] * g, mask=m10, sem="relaxed")
            tl.atomic_add(grad_value_base + o11, (ay1 * fx)[:, None] * g, mask=m11, sem="relaxed")


# Whether the kernels above run under Triton's interpreter: Triton decides it when a kernel
# (and its standard library: tl.sum, tl.zeros) is decorated, from TRITON_INTERPRET at import.
_INTERPRETED = bool(triton.knobs.runtime.interpret)


@functools.lru_cache(maxsize=64)
def _level_table(shapes: Tuple, starts: Tuple, device: torch.device) -> Tensor:
    """The [L, 3] int32 table (H, W, start) on ``device``: copied once per level layout."""
    rows = [[h, w, s] for (h, w), s in zip(shapes, starts)]
    return torch.tensor(rows, dtype=torch.int32).to(device)


def _launch(kernel, args, batch_heads: int, queries: int, head_dim: int, L: int, P: int):
    """Launch one program per block of ``BLOCK_Q`` queries of one (image, head): a
    [BLOCK_Q, BLOCK_D] tile of about 2048 elements, 4 warps."""
    block_d = triton.next_power_of_2(head_dim)
    block_q = max(16, min(128, 2048 // block_d))
    options = {"num_warps": 4}
    if _INTERPRETED:  # fewer, larger programs: the interpreter's cost is per program
        block_q = max(16, min(triton.next_power_of_2(queries), 64))
        options = {}
    grid = (triton.cdiv(queries, block_q), batch_heads)
    kernel[grid](*args, L=L, P=P, BLOCK_Q=block_q, BLOCK_D=block_d, **options)


class _MSDeformAttnTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, levels):
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = sampling_locations.shape
        out_dtype = torch.promote_types(
            value.dtype, torch.promote_types(sampling_locations.dtype, attention_weights.dtype)
        )
        out = torch.empty(B, Lq, M, D, device=value.device, dtype=out_dtype)
        args = (value, levels, sampling_locations, attention_weights, out, S, Lq, M, D)
        _launch(_forward_kernel, args, B * M, Lq, D, L, P)
        ctx.save_for_backward(value, sampling_locations, attention_weights, levels)
        return out.view(B, Lq, M * D)

    @staticmethod
    def backward(ctx, grad_output):
        value, sampling_locations, attention_weights, levels = ctx.saved_tensors
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = sampling_locations.shape
        dev = value.device
        grad_value = torch.zeros(value.shape, device=dev, dtype=torch.float32)
        grad_loc = torch.empty(sampling_locations.shape, device=dev, dtype=torch.float32)
        grad_attn = torch.empty(attention_weights.shape, device=dev, dtype=torch.float32)
        args = (value, levels, sampling_locations, attention_weights, grad_output.contiguous())
        args += (grad_value, grad_loc, grad_attn, S, Lq, M, D)
        _launch(_backward_kernel, args, B * M, Lq, D, L, P)
        return (
            grad_value.to(value.dtype),
            grad_loc.to(sampling_locations.dtype),
            grad_attn.to(attention_weights.dtype),
            None,
        )


def ms_deform_attn_triton(
    value: Tensor,
    spatial_shapes: ShapesLike,
    level_start_index,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """
    Multi-scale deformable attention with Triton kernels; arguments and return as
    :func:`vltseg.modeling.ms_deform_attn` (``value`` [B, S, nH, dH], ``spatial_shapes``
    [L, 2] as a tensor or a list of (H, W), ``level_start_index`` [L],
    ``sampling_locations`` [B, Lq, nH, L, nP, 2], ``attention_weights`` [B, Lq, nH, L, nP];
    returns [B, Lq, nH * dH]). The dtypes may differ (see the module docstring). CUDA tensors
    run compiled; CPU tensors need Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
    """
    shapes, starts = check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    devices = {value.device, sampling_locations.device, attention_weights.device}
    if len(devices) != 1:
        raise ValueError(f"ms_deform_attn_triton: inputs must share one device, got {devices}")
    if value.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"ms_deform_attn_triton needs CUDA tensors, got {value.device}; to run it on CPU "
            "tensors (tests), set TRITON_INTERPRET=1 before Triton is imported. The CPU path "
            "of the op is vltseg.modeling.ms_deform_attn."
        )
    levels = _level_table(tuple(shapes), tuple(starts), value.device)
    return _MSDeformAttnTriton.apply(
        value.contiguous(), sampling_locations.contiguous(), attention_weights.contiguous(), levels
    )
