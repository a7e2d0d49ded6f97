"""
Multi-scale deformable attention (Deformable DETR, :paper:`Deformable DETR`) in pure PyTorch.

Same semantics as the official CUDA op ``MultiScaleDeformableAttention``: bilinear sampling with
``align_corners=False`` and zeros outside each level, then a weighted sum over levels and points.
The implementation in this file is the CPU path; ``ms_deform_attn`` runs Triton kernels for CUDA
tensors (:mod:`.ms_deform_attn_triton`) and plain ``grid_sample`` calls while the model is
exported to ONNX (:mod:`.ms_deform_attn_export`); ``backend=`` picks one explicitly.

How it is computed: every (query, head) needs ``4 * n_levels * n_points`` rows of the value map
(the four bilinear corners of every sampling point), each with one scalar weight
(attention weight x bilinear weight). That is exactly what ``F.embedding_bag`` computes with
``per_sample_weights``, without materializing the sampled values. Each level is copied into a
table with a two-pixel zero border, and a point's top-left corner is clamped into that border:
then its four corners are always the top-left row plus fixed offsets, and corners outside the
level read zeros, with no masks. The backward pass is written by hand (autograd.Function): the
value gradient is the transposed gather (points sorted by top-left row, one ``embedding_bag``
per corner), and the gradients of locations and attention weights follow from the closed-form
bilinear weights. benchmarks/bench_ms_deform_attn.py measures it against ``grid_sample``.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .ms_deform_attn_export import ms_deform_attn_grid_sample
from .ms_deform_attn_inputs import ShapesLike, check_inputs, level_shapes
from .ms_deform_attn_triton import ms_deform_attn_triton

__all__ = ["BACKENDS", "ms_deform_attn", "MSDeformAttn"]

# Zero border around every level in the table: wide enough that both corners of a clamped
# top-left corner (at -2 or W) stay inside the level's padded block.
_BORDER = 2


class _Geometry:
    """
    Corner rows and weights of all sampling points. Per-sample tensors are [N, L * P] with
    N = batch * queries * heads (one "bag" per query and head): the natural memory order of
    the inputs, so no transposes are needed.

    Attributes:
        size_x, size_y (Tensor): [L * P], width / height of each sample's level.
        near_x, far_x, near_y, far_y (Tensor): [N, L * P] bilinear weights of the lower / upper
            corner along x and y.
        attn (Tensor): [N, L * P] attention weights.
        corner_shifts (list[list[int]]): per corner (y0, x0), (y0, x1), (y1, x0), (y1, x1) and
            level, its table row relative to the top-left corner's.
        rows (Tensor): [N, 4 * L * P] table rows, per bag in corner-major order (int32 while
            the table has fewer than 2**31 rows: less memory traffic than int64).
        weights (Tensor): [N, 4 * L * P] attention x bilinear weight of every row.
    """

    def __init__(self, locations, attention, shapes, table_starts, rows_per_image):
        B, Lq, M, L, P, _ = locations.shape
        N, LP = B * Lq * M, L * P
        dev, dtype = locations.device, locations.dtype
        index = torch.int32 if B * rows_per_image < 2**31 else torch.int64

        def per_sample(values):  # one value per level -> [L * P]
            return torch.tensor(values, device=dev).repeat_interleave(P)

        self.size_x = per_sample([w for _, w in shapes]).to(dtype)
        self.size_y = per_sample([h for h, _ in shapes]).to(dtype)
        loc = locations.reshape(N, LP, 2)
        self.attn = attention.reshape(N, LP)
        corners = []
        for axis, size in ((0, self.size_x), (1, self.size_y)):
            # Pixel coordinate exactly as grid_sample(align_corners=False) rounds it, so that
            # floor() picks the same corners as the grid_sample-based implementations.
            pixel = (2 * loc[..., axis] - 1 + 1) * (size / 2) - 0.5
            low = pixel.floor()
            far = pixel - low
            near = low + 1 - pixel
            # Clamp to [-2, size]: a corner pair further out reads the border, as it should.
            # (A NaN location reads the border too; its NaN weights then make its output NaN.)
            low = torch.nan_to_num(low, nan=-_BORDER).clamp(min=-_BORDER)
            low_index = torch.minimum(low, size).to(index) + _BORDER
            corners.append((near, far, low_index))
        (self.near_x, self.far_x, x0), (self.near_y, self.far_y, y0) = corners

        ay_near = self.attn * self.near_y
        ay_far = self.attn * self.far_y
        weights = [ay_near * self.near_x, ay_near * self.far_x]
        weights += [ay_far * self.near_x, ay_far * self.far_x]
        self.weights = torch.stack(weights, dim=1).view(N, 4 * LP)

        padded_w = [w + 2 * _BORDER for _, w in shapes]
        top_left = per_sample(table_starts).to(index) + y0 * per_sample(padded_w).to(index) + x0
        # Row of (image b, pixel s, head m) in the [B * S' * M, D] table; bag n = (b, q, m).
        bag = torch.arange(N, device=dev, dtype=index)
        bag_offset = torch.div(bag, Lq * M, rounding_mode="floor") * rows_per_image + bag % M
        top_left = top_left * M + bag_offset[:, None]
        self.corner_shifts = [
            [(dy * pw + dx) * M for pw in padded_w] for dy in (0, 1) for dx in (0, 1)
        ]
        shifts = torch.stack([per_sample(c) for c in self.corner_shifts]).to(index)  # [4, LP]
        self.rows = (top_left[:, None, :] + shifts).view(N, 4 * LP)


def _padded_table(value: Tensor, shapes, starts) -> Tuple[Tensor, List[int]]:
    """
    Copy every level of value [B, S, M, D] into a table [B, S', M, D] with a zero border.

    Returns:
        The table and the start of every level's padded block along S'.
    """
    B, _, M, D = value.shape
    pad = 2 * _BORDER
    sizes = [(h + pad) * (w + pad) for h, w in shapes]
    table_starts = [sum(sizes[:i]) for i in range(len(sizes))]
    table = value.new_zeros(B, sum(sizes), M, D)
    for (h, w), s, t in zip(shapes, starts, table_starts):
        block = table[:, t : t + (h + pad) * (w + pad)].view(B, h + pad, w + pad, M, D)
        block[:, _BORDER:-_BORDER, _BORDER:-_BORDER] = value[:, s : s + h * w].view(B, h, w, M, D)
    return table, table_starts


def _unpad_table_grad(grad_table: Tensor, value_shape, shapes, starts, table_starts) -> Tensor:
    """Inverse of :func:`_padded_table` for gradients: the interiors, in value's layout."""
    B, _, M, D = value_shape
    pad = 2 * _BORDER
    grad_table = grad_table.view(B, -1, M, D)
    grad_value = grad_table.new_zeros(value_shape)
    for (h, w), s, t in zip(shapes, starts, table_starts):
        block = grad_table[:, t : t + (h + pad) * (w + pad)].view(B, h + pad, w + pad, M, D)
        interior = block[:, _BORDER:-_BORDER, _BORDER:-_BORDER]
        grad_value[:, s : s + h * w] = interior.reshape(B, h * w, M, D)
    return grad_value


def _scatter_to_table(grad, rows, weights, corner_shifts, num_rows, image_rows, level_blocks):
    """
    The value-table gradient (the transpose of the forward gather): row r receives
    sum(weight * grad[bag]) over every sample that reads it.

    Points are sorted by their top-left row once; every corner is then one ``embedding_bag``
    over the same sorted points (bags = table rows), shifted by the corner's row offset within
    each level's block.

    Args:
        grad (Tensor): [N, D] gradient of every bag's output.
        rows, weights (Tensor): [N, 4 * LP] from :class:`_Geometry`.
        corner_shifts (list[list[int]]): per corner and level, the row offset from the
            top-left corner (:class:`_Geometry`).
        num_rows (int): rows of the table; image_rows (int): rows per image.
        level_blocks (list[tuple[int, int]]): per level, its first and last + 1 row within one
            image's block of rows.
    """
    N, K = rows.shape
    LP = K // 4
    top_left = rows.view(N, 4, LP)[:, 0].reshape(-1)
    order = torch.sort(top_left)[1]
    counts = torch.bincount(top_left, minlength=num_rows)
    offsets = torch.cumsum(counts, 0) - counts
    bags = torch.div(order, LP, rounding_mode="floor")
    per_corner = weights.view(N, 4, LP).transpose(0, 1).reshape(4, N * LP).index_select(1, order)
    # Corner 0 is the top-left one: its rows need no shift.
    out = F.embedding_bag(bags, grad, offsets, per_sample_weights=per_corner[0], mode="sum")
    per_image = out.view(-1, image_rows, grad.shape[1])
    for corner in range(1, 4):
        part = F.embedding_bag(
            bags, grad, offsets, per_sample_weights=per_corner[corner], mode="sum"
        ).view(-1, image_rows, grad.shape[1])
        # Both corners stay inside the level's padded block, so shifting within it is exact.
        for (first, last), shift in zip(level_blocks, corner_shifts[corner]):
            per_image[:, first + shift : last] += part[:, first : last - shift]
    return out


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, shapes, starts):
        B, _, M, D = value.shape
        Lq = sampling_locations.shape[1]
        table, table_starts = _padded_table(value, shapes, starts)
        image_rows = table.shape[1] * M
        geo = _Geometry(sampling_locations, attention_weights, shapes, table_starts, image_rows)
        table = table.view(-1, D)
        out = F.embedding_bag(geo.rows, table, per_sample_weights=geo.weights, mode="sum")
        ctx.save_for_backward(
            table, geo.rows, geo.weights, geo.attn, geo.near_x, geo.far_x, geo.near_y, geo.far_y
        )
        ctx.sizes = (geo.size_x, geo.size_y)
        ctx.corner_shifts = geo.corner_shifts
        ctx.image_rows = image_rows
        pad = 2 * _BORDER
        ctx.level_blocks = [
            (t * M, (t + (h + pad) * (w + pad)) * M) for (h, w), t in zip(shapes, table_starts)
        ]
        ctx.layout = (shapes, starts, table_starts, value.shape, sampling_locations.shape)
        return out.view(B, Lq, M * D)

    @staticmethod
    def backward(ctx, grad_output):
        table, rows, weights, attn, near_x, far_x, near_y, far_y = ctx.saved_tensors
        shapes, starts, table_starts, value_shape, loc_shape = ctx.layout
        N, K = rows.shape
        grad = grad_output.reshape(N, -1).contiguous()
        grad_value = grad_locations = grad_attention = None

        if ctx.needs_input_grad[0]:
            grad_table = _scatter_to_table(
                grad,
                rows,
                weights,
                ctx.corner_shifts,
                table.shape[0],
                ctx.image_rows,
                ctx.level_blocks,
            )
            grad_value = _unpad_table_grad(grad_table, value_shape, shapes, starts, table_starts)

        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # d(output)/d(weight of a sample) = <grad of its bag, its table row>. This is the op
            # autograd itself uses for embedding_bag's per_sample_weights gradient.
            grad_w = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad,
                table,
                rows.reshape(-1),
                torch.arange(0, N * K, K, device=rows.device, dtype=rows.dtype),
                torch.arange(N, device=rows.device, dtype=rows.dtype).repeat_interleave(K),
                0,  # mode "sum"
            )
            g00, g01, g10, g11 = grad_w.view(N, 4, K // 4).unbind(1)
            if ctx.needs_input_grad[1]:
                gx = attn * (near_y * (g01 - g00) + far_y * (g11 - g10))
                gy = attn * (near_x * (g10 - g00) + far_x * (g11 - g01))
                # d(pixel coordinate)/d(location) is the level size (W for x, H for y).
                size_x, size_y = ctx.sizes
                grad_locations = torch.stack([gx * size_x, gy * size_y], -1).view(loc_shape)
            if ctx.needs_input_grad[2]:
                ga = near_y * (g00 * near_x + g01 * far_x) + far_y * (g10 * near_x + g11 * far_x)
                grad_attention = ga.view(loc_shape[:-1])
        return grad_value, grad_locations, grad_attention, None, None


# The implementations ms_deform_attn can run (its ``backend`` argument).
BACKENDS = ("embedding_bag", "triton", "grid_sample")


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: Union[Tensor, Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """
    Multi-scale deformable attention core, with the semantics of the official CUDA op.

    Args:
        value (Tensor): [B, S, nH, dH], the flattened value maps of all levels.
        spatial_shapes (Tensor or list): [L, 2], (H, W) of every level.
        level_start_index (Tensor or list): [L], where each level starts along S.
        sampling_locations (Tensor): [B, Lq, nH, L, nP, 2], (x, y) in [0, 1] relative to each
            level (0 = left/top edge, 1 = right/bottom edge); outside samples read zeros.
        attention_weights (Tensor): [B, Lq, nH, L, nP].
        backend (str, optional): one of :data:`BACKENDS`; None picks automatically:
            "grid_sample" while ONNX export traces the model (plain ops that export as
            GridSample), "triton" for CUDA tensors (:mod:`.ms_deform_attn_triton`),
            "embedding_bag" otherwise (this file; the CPU path).

    Returns:
        Tensor: [B, Lq, nH * dH], for every query and head the attention-weighted sum of the
        bilinearly sampled values (heads concatenated).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"ms_deform_attn: backend must be one of {BACKENDS}, got {backend!r}")
    shapes, starts = check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    if not (value.dtype == sampling_locations.dtype == attention_weights.dtype):
        raise ValueError(
            "value, sampling_locations and attention_weights must share one dtype, got "
            f"{value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}"
        )
    if backend is None:
        if torch.onnx.is_in_onnx_export():
            backend = "grid_sample"
        elif value.is_cuda:
            backend = "triton"
        else:
            backend = "embedding_bag"
    if backend == "grid_sample":
        return ms_deform_attn_grid_sample(
            value, shapes, starts, sampling_locations, attention_weights
        )
    if backend == "triton":
        return ms_deform_attn_triton(value, shapes, starts, sampling_locations, attention_weights)
    return _MSDeformAttnFunction.apply(
        value.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        shapes,
        starts,
    )


class MSDeformAttn(nn.Module):
    """
    Multi-scale deformable attention module (official parameter names: ``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``).

    Every query predicts, per head, ``n_levels * n_points`` sampling offsets around its reference
    point and a softmax over the same samples.
    """

    def __init__(
        self, *, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4
    ):
        """
        Args:
            d_model: width of queries and values.
            n_levels: number of feature levels attended over.
            n_heads: attention heads; ``d_model`` must be divisible by it.
            n_points: sampling points per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's initialization: head h samples along direction 2*pi*h/n_heads,
        point p at distance p + 1 (in pixels of each level); uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([angles.cos(), angles.sin()], -1)
        # Scale so that the larger component is 1: directions land on the square's border.
        direction = direction / direction.abs().max(-1, keepdim=True)[0]
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = direction[:, None, None, :] * distance[None, None, :, None]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: ShapesLike,
        input_level_start_index: Union[Tensor, Sequence[int]],
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query (Tensor): [B, Lq, C].
            reference_points (Tensor): [B, Lq, L, 2], (x, y) in [0, 1] per level.
            input_flatten (Tensor): [B, S, C], all levels flattened, S = sum of H_l * W_l.
            input_spatial_shapes (list[tuple[int, int]] or Tensor): [L, 2], (H, W) per level.
            input_level_start_index (list[int] or Tensor): [L], start of each level along S.
            input_padding_mask (Tensor, optional): [B, S], True where the input is padding
                (its value is zeroed).

        Returns:
            Tensor: [B, Lq, C].
        """
        B, Lq, _ = query.shape
        S = input_flatten.shape[1]
        # Python ints: no device value is read (the pixel decoder passes ints).
        shapes = level_shapes(input_spatial_shapes)
        if len(shapes) != self.n_levels or sum(h * w for h, w in shapes) != S:
            raise ValueError(
                f"input_spatial_shapes {shapes} must list {self.n_levels} levels whose "
                f"sizes add up to the {S} input positions"
            )
        if reference_points.shape != (B, Lq, self.n_levels, 2):
            raise ValueError(
                f"reference_points must be [B, Lq, n_levels, 2] = {(B, Lq, self.n_levels, 2)}, "
                f"got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, self.n_heads, self.d_model // self.n_heads)
        nH, L, P = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(B, Lq, nH, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, nH, L * P).softmax(-1)
        weights = weights.view(B, Lq, nH, L, P)
        # Offsets are in pixels of each level; locations are normalized to [0, 1].
        normalizer = offsets.new_tensor([(w, h) for h, w in shapes])  # [L, 2] as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[:, None, :]
        out = ms_deform_attn(value, shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
