"""The DG report as a figure: per-domain bars with rPD, and a per-class heat map, per task."""
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlt_common.utils.atomic import atomic_write_bytes

__all__ = ["plot_dg_report"]

_SOURCE_COLOR, _TARGET_COLOR = "#4c72b0", "#dd8452"
# What the per-class values of each task are.
_PER_CLASS_LABELS = {"sem_seg": "IoU", "bbox": "AP", "segm": "mask AP"}


def plot_dg_report(report, path):
    """
    Draw the report (see :func:`.dg_report.build_dg_report`) and save it as a PNG, atomically.

    One row per task: on the left the primary metric of every dataset (the source in blue,
    targets in orange, each target labelled with its rPD, the dashed line is the mean over the
    targets); on the right the per-class values, one column per domain.

    Args:
        report (dict): the report.
        path (str): PNG file to write.
    """
    tasks = list(report["tasks"].items())
    # The Agg canvas without pyplot: no global backend state, safe in any process.
    fig = Figure(figsize=(15, 5.2 * len(tasks)))
    FigureCanvasAgg(fig)
    for row, (task, data) in enumerate(tasks):
        _bars(fig.add_subplot(len(tasks), 2, 2 * row + 1), task, data, report)
        _heatmap(fig.add_subplot(len(tasks), 2, 2 * row + 2), task, data, report)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())


def _order(data, report):
    names = [report["source"]] + report["targets"]
    return [n for n in names if n in data["datasets"]]


def _bars(ax, task, data, report):
    metric = data["metric"]
    names = _order(data, report)
    entries = [data["datasets"][n] for n in names]
    values = [e["metrics"][metric] for e in entries]
    heights = [v if math.isfinite(v) else 0.0 for v in values]
    colors = [_SOURCE_COLOR if n == report["source"] else _TARGET_COLOR for n in names]
    x = np.arange(len(names))
    ax.bar(x, heights, color=colors)
    for k, (e, v) in enumerate(zip(entries, values)):
        label = "-" if not math.isfinite(v) else f"{v:.1f}"
        if names[k] != report["source"] and math.isfinite(e["rPD"][metric]):
            label += f"\nrPD {e['rPD'][metric]:.0f}%"
        ax.text(k, heights[k], label, ha="center", va="bottom", fontsize=8)
    mean = data["mean_target"]["metrics"][metric]
    if math.isfinite(mean):
        ax.axhline(mean, color=_TARGET_COLOR, linestyle="--", linewidth=1)
        ax.text(-0.45, mean, f"mean of targets {mean:.1f}", ha="left", va="bottom",
                fontsize=8, color=_TARGET_COLOR)
    ax.set_xticks(x)
    ax.set_xticklabels([e["domain"] for e in entries], rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(heights + [1.0]) * 1.25)
    ax.set_title(f"{task}: {metric} per domain (source: {report['source']})", fontsize=10)


def _heatmap(ax, task, data, report):
    names = _order(data, report)
    entries = [data["datasets"][n] for n in names]
    classes = list(dict.fromkeys(c for e in entries for c in e["per_class"]))
    if not classes:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no per-class results", ha="center", va="center")
        return
    grid = np.array([[e["per_class"].get(c, np.nan) for e in entries] for c in classes])
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=0, vmax=100)
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 50 else "black")
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([e["domain"] for e in entries], rotation=30, ha="right")
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=7)
    ax.set_title(f"{task}: per-class {_PER_CLASS_LABELS.get(task, 'value')}", fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.04)
