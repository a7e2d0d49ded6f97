"""The domain-generalization report: every test domain against the source, in one place.

From the results of one evaluation pass over several datasets (``{dataset: {task: metrics}}``,
what ``DefaultTrainer.test`` returns) it computes, per task (semantic segmentation "sem_seg",
detection "bbox", instance masks "segm"): the headline metrics and per-class values of every
dataset, their mean over the target datasets, and the relative performance
:func:`relative_performance` (rPD) of each target against the source. It logs the tables and
writes ``dg_report.json`` and ``dg_report.png``.
"""
import dataclasses
import json
import logging
import math
import os

import numpy as np
from detectron2.data import MetadataCatalog
from tabulate import tabulate

from vlt_common.utils.atomic import atomic_write_bytes

from .corruption_report import corruption_of, format_corruption_tables, group_corruptions
from .plot import plot_dg_report
from .sem_seg_evaluator import MIOU_CONVENTIONS

__all__ = [
    "TASKS",
    "build_dg_report",
    "format_dg_tables",
    "relative_performance",
    "write_dg_report",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TaskMetrics:
    """Which entries of a task's results the report shows."""

    primary: str  # the metric rPD and the summary refer to
    headline: tuple  # metrics in the main table
    per_class_prefix: str  # results key prefix of per-class values


TASKS = {
    "sem_seg": TaskMetrics("mIoU", ("mIoU", "pACC"), "IoU-"),
    "bbox": TaskMetrics("AP", ("AP", "AP50", "AP75"), "AP-"),
    "segm": TaskMetrics("AP", ("AP", "AP50", "AP75"), "AP-"),
}

RPD_DEFINITION = (
    "rPD = 100 * metric(target) / metric(source): the share of its source-domain performance "
    "a model keeps on a target domain (100 = no loss under the domain shift)"
)


def relative_performance(target, source):
    """
    Relative performance under domain shift, rPD = 100 * target / source.

    This is VLT's single definition of rPD: the metric of a target domain (e.g. mIoU or AP on
    fog) as a percentage of the same metric on the source domain's test set. 100 means the
    model lost nothing to the domain shift; 50 means it kept half of its source performance.

    Args:
        target (float): the metric on the target domain.
        source (float): the same metric on the source domain.

    Returns:
        float: rPD in percent; NaN when either value is NaN or the source metric is not
        positive (no meaningful ratio).
    """
    if not (math.isfinite(target) and math.isfinite(source)) or source <= 0:
        return float("nan")
    return 100.0 * target / source


def _nanmean(values):
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def build_dg_report(results, source_dataset=None, *, failed=None, miou_convention=None):
    """
    Compute the report (no I/O).

    Args:
        results (dict): dataset name -> evaluator results ``{task: {metric: value}}``.
        source_dataset (str or None): the source domain's test set (the rPD denominator);
            None or "" takes the first dataset.
        failed (dict or None): dataset name -> why its evaluation failed; named in the report
            (a failed source leaves rPD undefined).
        miou_convention (str or None): the mIoU convention of the sem_seg results, "nan" or
            "zero" (``TEST.MIOU_ABSENT_CLASSES``), stated in the report.

    Returns:
        dict: {"source": name, "targets": [names], "rPD_definition": str,
        "tasks": {task: {"metric": primary, "datasets": {name: entry}, "mean_target": entry}},
        "summary": {...}, "failed": {name: why}, "miou_convention": str (when given)} where an
        entry is {"domain", "metrics", "rPD", "per_class"} and "summary" is a flat dict of
        floats: "mean_target", "source" and "rPD" of the first task's primary metric, and
        "<task>/<metric>/mean_target" and "<task>/<metric>/rPD" for every task and headline
        metric.
    """
    flat = [k for k in results if k in TASKS]
    if flat:
        raise ValueError(
            f"results look like one dataset's results (keys {flat}); write_dg_report needs "
            "{dataset_name: {task: metrics}} for every test dataset"
        )
    failed = dict(failed or {})
    datasets = [name for name, res in results.items() if isinstance(res, dict) and res]
    if not datasets:
        raise ValueError(f"no dataset results to report (got keys {list(results)})")
    source = source_dataset or datasets[0]
    if source not in results and source not in failed:
        raise KeyError(f"source dataset {source!r} is not among the evaluated datasets {datasets}")
    # Corrupted domains are grouped on their own (corruption_report), not averaged as targets.
    corrupted = [name for name in datasets if name != source and corruption_of(name)]
    targets = [name for name in datasets if name != source and name not in corrupted]
    report = {"source": source, "targets": targets, "rPD_definition": RPD_DEFINITION, "tasks": {}}
    report["failed"] = failed
    if miou_convention is not None:
        report["miou_convention"] = f"{miou_convention}: {MIOU_CONVENTIONS[miou_convention]}"
    for name, why in failed.items():
        logger.error("Test dataset %s was not evaluated: %s", name, why)
    if corrupted:
        report["corrupted"] = corrupted
    summary = {}
    for task, spec in TASKS.items():
        have = [name for name in datasets if task in results[name]]
        if not have:
            continue
        if source not in have and source not in failed:
            logger.warning("Source dataset %s has no %r results: no rPD for it", source, task)
        entries = {name: _entry(name, results[name][task], spec) for name in have}
        source_metrics = entries[source]["metrics"] if source in entries else {}
        for entry in entries.values():
            entry["rPD"] = {
                m: relative_performance(v, source_metrics.get(m, float("nan")))
                for m, v in entry["metrics"].items()
            }
        task_targets = [name for name in have if name in targets]
        mean = _mean_entry([entries[name] for name in task_targets], source_metrics, spec)
        report["tasks"][task] = {"metric": spec.primary, "datasets": entries, "mean_target": mean}
        for metric in spec.headline:
            summary[f"{task}/{metric}/mean_target"] = mean["metrics"][metric]
            summary[f"{task}/{metric}/rPD"] = mean["rPD"][metric]
        _add_corruptions(task, report["tasks"][task], entries, corrupted, source_metrics, summary)
        if len(report["tasks"]) == 1:
            summary["mean_target"] = mean["metrics"][spec.primary]
            summary["source"] = source_metrics.get(spec.primary, float("nan"))
            summary["rPD"] = mean["rPD"][spec.primary]
    if not report["tasks"]:
        raise ValueError(f"none of the results has a task VLT reports ({sorted(TASKS)})")
    if not targets:
        logger.warning("Only the source dataset %s was evaluated: no target domains", source)
    report["summary"] = summary
    return report


def _add_corruptions(task, task_report, entries, corrupted, source_metrics, summary):
    spec = TASKS[task]
    values = {n: entries[n]["metrics"][spec.primary] for n in corrupted if n in entries}
    if not values:
        return
    source_value = source_metrics.get(spec.primary, float("nan"))
    grouped = group_corruptions(values, source_value, relative_performance)
    task_report["corruptions"] = grouped
    for clean, data in grouped.items():
        for group, row in data["means"].items():
            key = f"{task}/{spec.primary}/{clean}_c/mean_{group}"
            summary[key], summary[f"{key}/rPD"] = row["mean"], row["rPD"]


def _entry(name, task_results, spec):
    missing = [m for m in spec.headline if m not in task_results]
    if missing:
        raise KeyError(f"results of {name!r} lack {missing} (have {sorted(task_results)})")
    meta = MetadataCatalog.get(name)
    prefix = spec.per_class_prefix
    return {
        "domain": getattr(meta, "domain", name),
        "metrics": {m: float(task_results[m]) for m in spec.headline},
        "per_class": {
            k[len(prefix):]: float(v) for k, v in task_results.items() if k.startswith(prefix)
        },
    }


def _mean_entry(entries, source_metrics, spec):
    metrics = {m: _nanmean([e["metrics"][m] for e in entries]) for m in spec.headline}
    classes = list(dict.fromkeys(c for e in entries for c in e["per_class"]))
    return {
        "domain": "mean (targets)",
        "metrics": metrics,
        # The mean of the targets' rPD equals the rPD of their mean (same denominator).
        "rPD": {
            m: relative_performance(v, source_metrics.get(m, float("nan")))
            for m, v in metrics.items()
        },
        "per_class": {
            c: _nanmean([e["per_class"].get(c, float("nan")) for e in entries]) for c in classes
        },
    }


def _fmt(value):
    return f"{value:.1f}" if math.isfinite(value) else "-"


def _row(label, entry, role, spec):
    return (
        [label, entry["domain"], role]
        + [_fmt(entry["metrics"][m]) for m in spec.headline]
        + [_fmt(entry["rPD"][spec.primary])]
    )


def format_dg_tables(report):
    """The report as text tables (one summary and one per-class table per task)."""
    blocks = []
    for task, data in report["tasks"].items():
        entries = data["datasets"]
        spec = TASKS[task]
        order = [n for n in [report["source"]] + report["targets"] if n in entries]
        mean = data["mean_target"]
        rows = [
            _row(name, entries[name], "source" if name == report["source"] else "target", spec)
            for name in order
        ]
        rows.append(_row("mean (targets)", dict(mean, domain=""), "", spec))
        headers = ["dataset", "domain", "role"] + list(spec.headline) + [f"rPD ({spec.primary})"]
        title = f"DG report, {task}"
        if task == "sem_seg" and "miou_convention" in report:
            title += f" (mIoU convention {report['miou_convention']})"
        blocks.append(f"{title}:\n" + tabulate(rows, headers, tablefmt="pipe"))
        classes = list(dict.fromkeys(c for n in order for c in entries[n]["per_class"]))
        if classes:
            class_rows = [
                [c] + [_fmt(entries[n]["per_class"].get(c, float("nan"))) for n in order]
                + [_fmt(mean["per_class"].get(c, float("nan")))]
                for c in classes
            ]
            class_headers = ["class"] + [entries[n]["domain"] for n in order] + ["mean (targets)"]
            blocks.append(
                f"Per-class {spec.per_class_prefix.rstrip('-')} ({task}):\n"
                + tabulate(class_rows, class_headers, tablefmt="pipe")
            )
        if "corruptions" in data:
            clean_values = {
                n: entries[n]["metrics"][spec.primary] for n in data["corruptions"] if n in entries
            }
            blocks += format_corruption_tables(
                task, spec.primary, data["corruptions"], clean_values
            )
    for name, why in report.get("failed", {}).items():
        blocks.append(f"FAILED, not evaluated: {name}: {why}")
    return "\n\n".join(blocks)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_dg_report(results, *, source_dataset, output_dir, failed=None, miou_convention=None):
    """
    Build the DG report, log its tables and write ``dg_report.json`` and ``dg_report.png``.

    Args:
        results (dict): dataset name -> ``{task: {metric: value}}`` for every evaluated dataset
            (the OrderedDict ``DefaultTrainer.test`` builds before it flattens a single one).
        source_dataset (str or None): the source domain's test set; None or "" takes the first.
        output_dir (str): folder for the two files (created if needed).
        failed (dict or None): dataset name -> why its evaluation failed (named in the report).
        miou_convention (str or None): ``TEST.MIOU_ABSENT_CLASSES`` of the sem_seg results.

    Returns:
        dict: the report (see :func:`build_dg_report`); NaN values appear as null in the JSON.
    """
    report = build_dg_report(
        results, source_dataset, failed=failed, miou_convention=miou_convention
    )
    logger.info("Domain-generalization report (%s)\n%s", RPD_DEFINITION, format_dg_tables(report))
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "dg_report.json")
    atomic_write_bytes(json_path, json.dumps(_json_safe(report), indent=2))
    png_path = os.path.join(output_dir, "dg_report.png")
    plot_dg_report(report, png_path)
    logger.info("DG report written to %s and %s", json_path, png_path)
    return report
