"""The Triton kernels of multi-scale deformable attention (the CUDA path), checked on CPU under
Triton's interpreter against the reference op (``ms_deform_attn``'s embedding_bag path in float64,
itself pinned against an explicit bilinear loop in test_ms_deform_attn.py).

Triton reads ``TRITON_INTERPRET`` once, when kernels and its standard library are decorated at
import, so the interpreted runs happen in one subprocess started with ``TRITON_INTERPRET=1``
(this test session keeps compiled Triton, whatever imported it first). The subprocess runs
:func:`measure_all` and returns its numbers as JSON; every test asserts on one case.

Bound: the kernels accumulate in float32, so inputs are float32 values and the reference runs in
float64 on the same values; max relative difference (max abs difference / max abs reference)
<= 1e-5 for the output and for each gradient (measured about 2e-7).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vltseg.modeling import ms_deform_attn, ms_deform_attn_triton

REPO = Path(__file__).resolve().parents[2]
MAX_REL_DIFF = 1e-5

# name -> level shapes (H, W), batch, queries, heads, head dim, points, how far locations reach
# beyond [0, 1] (so that corners and whole samples fall outside the levels).
CASES = {
    "square_levels_inside": ([(4, 4), (2, 2)], 1, 5, 2, 4, 2, 0.0),
    "non_square_outside_batch2": ([(3, 5), (2, 3), (4, 2)], 2, 7, 3, 5, 2, 0.4),
    "four_heads_four_points": ([(5, 3), (1, 4), (2, 6)], 3, 9, 4, 8, 4, 0.2),
    "head_dim_over_32_one_level": ([(6, 7)], 2, 20, 1, 33, 3, 0.3),
    "more_queries_than_a_block": ([(7, 9), (3, 4)], 1, 70, 2, 4, 1, 0.3),
}


def _inputs(shapes, batch, queries, heads, dim, points, spread, seed):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(batch, S, heads, dim, generator=g)
    loc = torch.rand(batch, queries, heads, L, points, 2, generator=g) * (1 + 2 * spread) - spread
    attn = torch.rand(batch, queries, heads, L, points, generator=g)
    starts = [sum(h * w for h, w in shapes[:i]) for i in range(L)]
    return value, loc, attn, starts


def _rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _run(fn, tensors, shapes, starts, grad_out):
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(inputs[0], shapes, starts, inputs[1], inputs[2])
    return out, torch.autograd.grad(out, inputs, grad_out.to(out.dtype))


def _measure_case(shapes, batch, queries, heads, dim, points, spread):
    value, loc, attn, starts = _inputs(shapes, batch, queries, heads, dim, points, spread, seed=1)
    grad_out = torch.randn(batch, queries, heads * dim, generator=torch.Generator().manual_seed(2))
    out, grads = _run(ms_deform_attn_triton, (value, loc, attn), shapes, starts, grad_out)
    tensors64 = [t.double() for t in (value, loc, attn)]
    ref, ref_grads = _run(ms_deform_attn, tensors64, torch.tensor(shapes), starts, grad_out)
    return {
        "dtypes": [str(t.dtype) for t in (out, *grads)],
        "shape": list(out.shape),
        "rel": [_rel(a, b) for a, b in zip((out, *grads), (ref, *ref_grads))],
    }


def _measure_special():
    """Far-away, non-finite and mixed-dtype inputs."""
    shapes, starts = [(3, 5), (2, 3)], [0, 15]
    value, loc, attn, _ = _inputs(shapes, 1, 4, 2, 3, 2, 0.0, seed=3)
    far = loc.clone()
    far[0, 0, ..., 0], far[0, 1, ..., 1], far[0, 2, ..., 0] = 3.5, -1e6, 1e12  # never inside
    ones = torch.ones(1, 4, 6)
    out, grads = _run(ms_deform_attn_triton, (value, far, attn), shapes, starts, ones)
    far_out = out.view(1, 4, 2, 3)[0, :3]
    far_grads = [g[0, :3] for g in grads[1:]]  # queries 0-2 own these locations / weights
    nonfinite = loc.clone()
    nonfinite[0, 1, 1, 0, 0, 0] = float("nan")
    nonfinite[0, 3, 0, 1, 1, 1] = float("inf")
    poisoned = ms_deform_attn_triton(value, shapes, starts, nonfinite, attn).view(1, 4, 2, 3)
    bad = torch.zeros(1, 4, 2, 3, dtype=torch.bool)
    bad[0, 1, 1] = bad[0, 3, 0] = True
    # Mixed dtypes as under autocast: float16 values, float32 locations and weights.
    half = value.half()
    mixed, mixed_grads = _run(ms_deform_attn_triton, (half, loc, attn), shapes, starts, out * 0 + 1)
    ref, ref_grads = _run(
        ms_deform_attn, [t.double() for t in (half, loc, attn)], shapes, starts, out * 0 + 1
    )
    via_switch = ms_deform_attn(value, shapes, starts, loc, attn, backend="triton")
    direct = ms_deform_attn_triton(value, shapes, starts, loc, attn)
    return {
        "backend_switch_equal": bool(torch.equal(via_switch, direct)),
        "far_nonzero": [int(torch.count_nonzero(t)) for t in (far_out, *far_grads)],
        "far_value_grad_nonzero": int(torch.count_nonzero(grads[0])),
        "nan_where_bad": bool(torch.isnan(poisoned[bad]).all()),
        "finite_elsewhere": bool(torch.isfinite(poisoned[~bad]).all()),
        "mixed_dtypes": [str(t.dtype) for t in (mixed, *mixed_grads)],
        "mixed_rel": [_rel(a, b) for a, b in zip((mixed, *mixed_grads), (ref, *ref_grads))],
    }


def measure_all():
    """Run every case (called in the interpreted subprocess)."""
    results = {name: _measure_case(*case) for name, case in CASES.items()}
    results["special"] = _measure_special()
    return results


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    code = (
        "import json, tests.vltseg.test_ms_deform_attn_triton as t; "
        "print(json.dumps(t.measure_all()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_reference(interpreted, name):
    shapes, batch, queries, heads, dim, _, _ = CASES[name]
    result = interpreted[name]
    assert result["shape"] == [batch, queries, heads * dim]
    assert result["dtypes"] == ["torch.float32"] * 4
    labels = ["output", "grad value", "grad locations", "grad attention"]
    for label, rel in zip(labels, result["rel"]):
        assert rel <= MAX_REL_DIFF, f"{name}: {label} max relative difference {rel:.2e}"


def test_samples_outside_every_level_read_zeros_and_get_no_gradient(interpreted):
    special = interpreted["special"]
    assert special["far_nonzero"] == [0, 0, 0]
    # Query 3 stays inside, so the value gradient is not zero everywhere.
    assert special["far_value_grad_nonzero"] > 0


def test_backend_switch_runs_the_triton_kernels(interpreted):
    assert interpreted["special"]["backend_switch_equal"]


def test_non_finite_location_poisons_only_its_own_output(interpreted):
    assert interpreted["special"]["nan_where_bad"]
    assert interpreted["special"]["finite_elsewhere"]


def test_mixed_dtypes_compute_in_float32(interpreted):
    """float16 values with float32 locations/weights: float32 output, gradients in each
    input's dtype (float16 value gradient: its rounding, 2**-11, bounds the difference)."""
    special = interpreted["special"]
    assert special["mixed_dtypes"] == ["torch.float32", "torch.float16"] + ["torch.float32"] * 2
    out_rel, value_rel, loc_rel, attn_rel = special["mixed_rel"]
    assert max(out_rel, loc_rel, attn_rel) <= MAX_REL_DIFF
    assert value_rel <= 2**-11


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter accepts CPU tensors"
)
def test_cpu_tensors_without_interpreter_are_refused_with_a_clear_error():
    value, loc, attn, starts = _inputs([(2, 2)], 1, 1, 1, 2, 1, 0.0, seed=0)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ms_deform_attn_triton(value, [(2, 2)], starts, loc, attn)
