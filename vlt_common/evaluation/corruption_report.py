"""The corruption part of the DG report: corrupted test domains grouped by corruption and severity.

Corrupted domains (``<clean>_c_<corruption>_<severity>``, :mod:`vlt_common.data.corruptions`) are
not target domains of the main report: they would swamp the mean over real targets (19 x 5 of
them per dataset). They are grouped per clean dataset instead, as Cityscapes-C papers report them:
for every corruption the metric at each severity and the mean over its severities; then the mean
over corruptions (the 15 common ones and the 4 extra ones separately), each with its rPD against
the report's source.
"""
import math

import numpy as np
from detectron2.data import MetadataCatalog
from tabulate import tabulate

from vlt_common.data.corruptions import (
    COMMON_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    parse_corrupted_name,
)

__all__ = ["corruption_of", "group_corruptions", "format_corruption_tables"]

# Mean rows: key, table label, the corruptions averaged.
_MEAN_ROWS = (
    ("common", "mean (15 common)", COMMON_CORRUPTIONS),
    ("extra", "mean (4 extra)", EXTRA_CORRUPTIONS),
)
_MEAN_LABELS = {key: label for key, label, _ in _MEAN_ROWS}


def corruption_of(name):
    """
    Args:
        name (str): a dataset name.

    Returns:
        dict or None: {"clean", "corruption", "severity"} for a corrupted domain (from its
        metadata, else from its name), None for any other dataset.
    """
    meta = MetadataCatalog.get(name)
    if hasattr(meta, "corruption"):
        return {"clean": meta.clean_dataset, "corruption": meta.corruption,
                "severity": int(meta.severity)}
    parsed = parse_corrupted_name(name)
    if parsed is None or parsed["corruption"] not in CORRUPTIONS:
        return None
    if parsed["severity"] not in SEVERITIES:
        return None
    return {"clean": parsed["base"], "corruption": parsed["corruption"],
            "severity": parsed["severity"]}


def _nanmean(values):
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def group_corruptions(values, source_value, rpd):
    """
    Group the corrupted domains' values of one metric.

    Args:
        values (dict): corrupted dataset name -> value of the metric.
        source_value (float): the metric on the source (rPD denominator).
        rpd (callable): ``rpd(target, source)``, the report's rPD.

    Returns:
        dict: clean dataset -> {"corruptions": {corruption: {"severities": {severity: value},
        "mean": mean over its severities, "rPD"}}, "means": {"common" or "extra": {"severities":
        {severity: mean over corruptions}, "mean": mean of the corruptions' means, "rPD"}}}.
        Corruptions and severities appear in the package's order; a mean row appears only when
        one of its corruptions was evaluated.
    """
    groups = {}
    for name, value in values.items():
        info = corruption_of(name)
        per_corruption = groups.setdefault(info["clean"], {})
        per_corruption.setdefault(info["corruption"], {})[info["severity"]] = value
    report = {}
    for clean, per_corruption in groups.items():
        corruptions = {}
        for corruption in (c for c in CORRUPTIONS if c in per_corruption):
            severities = dict(sorted(per_corruption[corruption].items()))
            mean = _nanmean(severities.values())
            corruptions[corruption] = {
                "severities": severities, "mean": mean, "rPD": rpd(mean, source_value)
            }
        means = {}
        for key, _, members in _MEAN_ROWS:
            present = [corruptions[c] for c in members if c in corruptions]
            if not present:
                continue
            levels = sorted({s for c in present for s in c["severities"]})
            mean = _nanmean([c["mean"] for c in present])
            means[key] = {
                "severities": {
                    s: _nanmean([c["severities"].get(s, float("nan")) for c in present])
                    for s in levels
                },
                "mean": mean,
                "rPD": rpd(mean, source_value),
            }
        report[clean] = {"corruptions": corruptions, "means": means}
    return report


def _fmt(value):
    return f"{value:.1f}" if math.isfinite(value) else "-"


def format_corruption_tables(task, metric, grouped, clean_values):
    """
    Args:
        task (str): e.g. "sem_seg".
        metric (str): e.g. "mIoU".
        grouped (dict): :func:`group_corruptions`'s result.
        clean_values (dict): clean dataset -> its value when it was evaluated.

    Returns:
        list[str]: one table per clean dataset: a row per corruption (the value at each
        severity, the mean over severities, its rPD) and the mean rows.
    """
    blocks = []
    for clean, data in grouped.items():
        rows_data = list(data["corruptions"].items()) + [
            (_MEAN_LABELS[key], row) for key, row in data["means"].items()
        ]
        levels = sorted({s for _, row in rows_data for s in row["severities"]})
        rows = [
            [label] + [_fmt(row["severities"].get(s, float("nan"))) for s in levels]
            + [_fmt(row["mean"]), _fmt(row["rPD"])]
            for label, row in rows_data
        ]
        headers = ["corruption"] + [f"s{s}" for s in levels] + ["mean", f"rPD ({metric})"]
        clean_text = (
            f"; clean: {_fmt(clean_values[clean])}" if clean in clean_values else ""
        )
        blocks.append(
            f"Corruption robustness, {task} {metric} on {clean}_c_<corruption>_<severity>"
            f"{clean_text}:\n" + tabulate(rows, headers, tablefmt="pipe", disable_numparse=True)
        )
    return blocks
