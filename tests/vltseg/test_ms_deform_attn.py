"""Multi-scale deformable attention: exact against an explicit bilinear loop, gradients against
finite differences and against grid_sample (the official PyTorch formulation, also the export
backend), module checks. The Triton backend: test_ms_deform_attn_triton.py."""
import math

import pytest
import torch

from benchmarks.bench_ms_deform_attn import reference_per_level, reference_plain
from vltseg.modeling import MSDeformAttn, ms_deform_attn

SHAPES = [(3, 4), (2, 3)]
STARTS = [0, 12]


def _inputs(batch=2, queries=5, heads=2, dim=3, points=2, dtype=torch.float64, spread=0.3):
    """Random inputs; locations reach ``spread`` beyond [0, 1] so zero padding is exercised."""
    levels = len(SHAPES)
    value = torch.randn(batch, sum(h * w for h, w in SHAPES), heads, dim, dtype=dtype)
    loc = torch.rand(batch, queries, heads, levels, points, 2, dtype=dtype)
    loc = loc * (1 + 2 * spread) - spread
    attn = torch.rand(batch, queries, heads, levels, points, dtype=dtype)
    return value, loc, attn


def _naive(value, loc, attn):
    """Per-sample bilinear interpolation with explicit loops (align_corners=False, zeros out)."""
    B, Lq, M, L, P, _ = loc.shape
    D = value.shape[-1]
    out = torch.zeros(B, Lq, M, D, dtype=value.dtype)
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                for lvl, ((h, w), start) in enumerate(zip(SHAPES, STARTS)):
                    level = value[b, start : start + h * w, m].reshape(h, w, D)
                    for p in range(P):
                        x = float(loc[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(loc[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < h and 0 <= xx < w:
                                    bilinear = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                    weight = bilinear * attn[b, q, m, lvl, p]
                                    out[b, q, m] += weight * level[yy, xx]
    return out.reshape(B, Lq, M * D)


def test_equals_naive_bilinear_loop():
    value, loc, attn = _inputs()
    out = ms_deform_attn(value, torch.tensor(SHAPES), torch.tensor(STARTS), loc, attn)
    assert out.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(out, _naive(value, loc, attn), rtol=0, atol=1e-12)


@pytest.mark.parametrize("x, y", [(3.5, 0.5), (-2.0, 0.5), (0.5, 1e6), (0.5, -1e6), (-9.0, 9.0)])
def test_far_outside_reads_zeros_and_gets_no_gradient(x, y):
    value, loc, attn = _inputs(batch=1)
    loc = loc.clone()
    loc[..., 0], loc[..., 1] = x, y  # outside every level
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(value, SHAPES, STARTS, loc, attn)
    assert torch.count_nonzero(out) == 0
    grads = torch.autograd.grad(out, inputs, torch.randn_like(out))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_non_finite_location_poisons_only_its_own_output():
    value, loc, attn = _inputs(batch=1)
    loc = loc.clone()
    loc[0, 2, 1, 0, 0, 0] = float("nan")  # query 2, head 1
    loc[0, 3, 0, 1, 1, 1] = float("inf")  # query 3, head 0
    out = ms_deform_attn(value, SHAPES, STARTS, loc, attn).view(1, 5, 2, 3)
    bad = torch.zeros(1, 5, 2, 3, dtype=torch.bool)
    bad[0, 2, 1] = bad[0, 3, 0] = True
    assert torch.isnan(out[bad]).all() and torch.isfinite(out[~bad]).all()


def test_gradcheck_float64():
    value, loc, attn = _inputs(batch=1, queries=3, heads=2, dim=2, points=2)
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(
        lambda v, s, a: ms_deform_attn(v, SHAPES, STARTS, s, a), inputs, eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("reference", [reference_per_level, reference_plain])
def test_matches_grid_sample_forward_and_backward(reference):
    shapes = torch.tensor([(8, 12), (4, 6), (2, 3)])
    starts = torch.tensor([0, 96, 120])
    B, M, D, P, Lq = 2, 4, 8, 4, 30
    torch.manual_seed(1)
    value = torch.randn(B, 126, M, D, requires_grad=True)
    loc = (torch.rand(B, Lq, M, 3, P, 2) * 1.4 - 0.2).requires_grad_()
    attn = torch.rand(B, Lq, M, 3, P).softmax(-1).requires_grad_()
    grad_out = torch.randn(B, Lq, M * D)

    ours = ms_deform_attn(value, shapes, starts, loc, attn)
    grads = torch.autograd.grad(ours, (value, loc, attn), grad_out)
    ref = reference(value, shapes, starts, loc, attn)
    ref_grads = torch.autograd.grad(ref, (value, loc, attn), grad_out)

    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_value_gradient_alone_equals_full_backward():
    value, loc, attn = _inputs(dtype=torch.float32)
    value.requires_grad_()
    (alone,) = torch.autograd.grad(ms_deform_attn(value, SHAPES, STARTS, loc, attn).sum(), value)
    loc.requires_grad_()
    attn.requires_grad_()
    out = ms_deform_attn(value, SHAPES, STARTS, loc, attn)
    full = torch.autograd.grad(out.sum(), (value, loc, attn))
    torch.testing.assert_close(alone, full[0])
    assert all(torch.count_nonzero(g) > 0 for g in full)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, s, a: (v[0], s, a), "value must be"),
        (lambda v, s, a: (v, s[..., 0], a), "sampling_locations must be"),
        (lambda v, s, a: (v, s, a[..., 0]), "attention_weights"),
        (lambda v, s, a: (v, s, a.float()), "one dtype"),
        (lambda v, s, a: (v[:, :10], s, a), "does not fit"),
    ],
)
def test_bad_input_is_rejected(change, message):
    value, loc, attn = _inputs()
    v, s, a = change(value, loc, attn)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(v, SHAPES, STARTS, s, a)


def test_grid_sample_backend_equals_the_default_cpu_path():
    """The export path (``backend="grid_sample"``) computes the same op, outputs and gradients."""
    value, loc, attn = _inputs()
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    grad_out = torch.randn(2, 5, 6, dtype=torch.float64)
    results = []
    for backend in (None, "grid_sample", "embedding_bag"):
        out = ms_deform_attn(inputs[0], SHAPES, STARTS, inputs[1], inputs[2], backend=backend)
        results.append((out, *torch.autograd.grad(out, inputs, grad_out)))
    expected = _naive(value.detach(), loc.detach(), attn.detach())
    torch.testing.assert_close(results[0][0], expected, rtol=0, atol=1e-12)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_unknown_backend_is_rejected():
    value, loc, attn = _inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ms_deform_attn(value, SHAPES, STARTS, loc, attn, backend="cuda")


def _module_inputs(attn_module, batch=2):
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    S = 30
    x = torch.randn(batch, S, attn_module.d_model)
    ref = torch.rand(batch, S, attn_module.n_levels, 2)
    return x, ref, shapes, starts


def test_module_shapes_and_padding_mask():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():  # move offsets away from the init so that samples spread out
        module.sampling_offsets.weight.normal_(0, 0.5)
    x, ref, shapes, starts = _module_inputs(module)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[:, 24:] = True  # the coarse level is padding
    out = module(x, ref, x, shapes, starts, mask)
    assert out.shape == x.shape

    # Padded positions do not contribute: changing the input there changes nothing (the
    # queries stay the same).
    changed = x.clone()
    changed[:, 24:] += 10.0
    out2 = module(x, ref, changed, shapes, starts, mask)
    torch.testing.assert_close(out, out2)
    out3 = module(x, ref, changed, shapes, starts)
    assert not torch.allclose(out, out3)


def test_module_rejects_inconsistent_shapes():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    x, ref, shapes, starts = _module_inputs(module)
    with pytest.raises(ValueError, match="input_spatial_shapes"):
        module(x, ref, x, torch.tensor([[4, 6], [2, 2]]), starts)
    with pytest.raises(ValueError, match="reference_points"):
        module(x, ref[:, :, :1], x, shapes, starts)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_levels=2, n_heads=4, n_points=3)


def test_module_initialization_is_deformable_detrs():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point p at p + 1 px.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = directions[:, None, None, :] * torch.arange(1.0, 4.0)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(4, 2, 3, 2), atol=1e-6, rtol=0)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0


def test_module_gradients_reach_every_parameter():
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    x, ref, shapes, starts = _module_inputs(module)
    module(x, ref, x, shapes, starts).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
