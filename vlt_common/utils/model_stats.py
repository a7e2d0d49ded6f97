"""Parameter counts and FLOPs of a model, for logs and the analysis tools."""
import math
from collections import OrderedDict

from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from tabulate import tabulate

__all__ = ["count_parameters", "parameter_table", "count_flops", "sdpa_flop_jit"]


def count_parameters(module):
    """
    Args:
        module (nn.Module):

    Returns:
        tuple[int, int]: (trainable, total) number of parameter elements.
    """
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def parameter_table(model, depth=2):
    """
    A table of trainable / total parameters per submodule, down to ``depth`` levels of names
    (e.g. ``backbone.trunk``, ``backbone.rein``, ``sem_seg_head.predictor``), plus the total.

    Args:
        model (nn.Module):
        depth (int): how many levels of the dotted parameter names to group by.

    Returns:
        str: the table.
    """
    groups = OrderedDict()
    for name, p in model.named_parameters():
        # Group by the owning module's path, cut to `depth` levels (top-level parameters by name).
        key = ".".join(name.split(".")[:-1][:depth]) or name
        trainable, total = groups.get(key, (0, 0))
        groups[key] = (trainable + (p.numel() if p.requires_grad else 0), total + p.numel())
    trainable, total = count_parameters(model)
    rows = [(k, f"{t:,}", f"{n:,}") for k, (t, n) in groups.items()]
    rows.append(("total", f"{trainable:,}", f"{total:,}"))
    return tabulate(rows, headers=["module", "trainable", "total"], tablefmt="pipe")


def sdpa_flop_jit(inputs, outputs):
    """
    fvcore handle for ``aten::scaled_dot_product_attention`` (fvcore does not count it):
    ``B * heads * Lq * Lk * (D + Dv)`` multiply-adds for ``q kᵀ`` and ``softmax(.) v``.
    """
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *batch, len_q, dim = q_shape
    len_k, dim_v = k_shape[-2], v_shape[-1]
    return math.prod(batch) * len_q * len_k * (dim + dim_v)


def count_flops(model, inputs):
    """
    FLOPs of one forward pass, counted by fvcore (one fused multiply-add = one flop, fvcore's
    convention), attention through ``scaled_dot_product_attention`` included.

    Args:
        model (nn.Module): in eval mode for inference FLOPs.
        inputs (tuple): the positional arguments of ``model.forward``.

    Returns:
        tuple[int, dict[str, int]]: total flops and flops per top-level submodule.
    """
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = {k: v for k, v in analysis.by_module().items() if k and "." not in k}
    return analysis.total(), by_module
