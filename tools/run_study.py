#!/usr/bin/env python
"""
The fine-tuning study of VLTSeg and Rein: train one model per (backbone, fine-tuning mode) with the
same recipe, evaluate every target domain, and compare them in one table and plot.

    python tools/run_study.py --config-file configs/vltseg_tiny_synthdg.yaml
    python tools/run_study.py --config-file configs/vltseg_evaclip-l14_gta5_5k.yaml --num-gpus 8 \
        --modes full rein --backbone EVA02-L-14=pretrained/EVA02_CLIP_L_psz14_s4B.pt \
        --backbone timm:vit_large_patch14_dinov2=pretrained/dinov2_vitl14.pth

Each run is an ordinary ``train_net.py`` run in ``<output>/<backbone>__<mode>`` (a finished run is
not trained again; an interrupted one resumes). The study writes ``study.json``, ``study.md`` and
``study.png`` into ``--output``. Backbones whose weight file is missing are skipped with a warning,
so the same command works at any scale.
"""
import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

import vltdet  # noqa: F401  (the projects register their config keys and models)
import vltseg  # noqa: F401
from vlt_common.engine import get_vlt_cfg
from vlt_common.utils.atomic import atomic_write, atomic_write_bytes

MODES = ("full", "frozen", "rein", "frozen_warmup")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
logger = logging.getLogger("vlt.study")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", default="output/study", help="folder of the runs and tables")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--backbone", action="append", default=[], metavar="ARCH=WEIGHTS",
        help="a backbone to compare (MODEL.VLT_BACKBONE.ARCH=PRETRAINED file); repeatable. "
        "Default: the config's own backbone",
    )
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.25,
        help="frozen_warmup: share of SOLVER.MAX_ITER trained with the trunk frozen",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run")
    parser.add_argument(
        "--train-script", default=TRAIN_NET,
        help="the training entry point (default: train_net.py); a launcher that registers your "
        "own datasets and then calls train_net, for example",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    return parser


def parse_backbones(entries):
    """
    Args:
        entries (list[str]): "ARCH=WEIGHTS" items ("ARCH=" for random initialization).

    Returns:
        list[tuple[str, str]]: (arch, weights) of the backbones whose weights exist locally.
    """
    backbones = []
    for entry in entries:
        arch, sep, weights = entry.partition("=")
        if not sep or not arch:
            raise ValueError(
                f"--backbone {entry!r}: expected ARCH=WEIGHTS (e.g. ViT-B-16=ViT-B-16.pt)"
            )
        if weights and not os.path.isfile(weights):
            logger.warning("Skipping backbone %s: weight file %s not found", arch, weights)
            continue
        backbones.append((arch, weights))
    return backbones


def run_overrides(mode, backbone, max_iter, warmup_fraction):
    """Config overrides of one study run (on top of the user's own)."""
    opts = ["MODEL.VLT_BACKBONE.FINETUNE", mode]
    if backbone is not None:
        opts += ["MODEL.VLT_BACKBONE.ARCH", backbone[0]]
        opts += ["MODEL.VLT_BACKBONE.PRETRAINED", backbone[1]]
    if mode == "frozen_warmup":
        opts += ["SOLVER.FROZEN_BACKBONE_ITERS", str(max(1, int(max_iter * warmup_fraction)))]
    # Rein's tokens give the queries in Rein mode (official Rein); the other modes have none.
    # (Rein's parameters train at the head's lr: the backbone declares them as adapters.)
    opts += ["MODEL.VLTSEG.REIN.LINK_QUERIES", str(mode == "rein")]
    return opts


def _run_name(arch, mode):
    return f"{arch.replace(':', '-').replace('/', '-')}__{mode}"


def train_one(train_script, config_file, output_dir, opts, num_gpus):
    """Run (or resume, or skip if finished) one training run; returns its report path."""
    report = os.path.join(output_dir, "dg_report.json")
    if os.path.isfile(report) and os.path.isfile(os.path.join(output_dir, "model_final.pth")):
        logger.info("Already finished: %s", output_dir)
        return report
    cmd = [sys.executable, train_script, "--config-file", config_file, "--num-gpus", str(num_gpus)]
    if os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        cmd.append("--resume")
    cmd += opts + ["OUTPUT_DIR", output_dir]
    logger.info("Running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    if not os.path.isfile(report):
        raise FileNotFoundError(f"{output_dir}: the run finished without writing dg_report.json")
    return report


def summarize(runs):
    """
    Args:
        runs (list[dict]): {"name", "backbone", "mode", "report"} with the loaded report dicts.

    Returns:
        dict: {"metric", "domains", "runs": [{"name", "backbone", "mode", "values": {domain: v},
        "mean_target", "rPD"}]} with the primary metric of the reports' first task.
    """
    first = runs[0]["report"]
    task = next(iter(first["tasks"]))
    metric = first["tasks"][task]["metric"]
    domains = list(first["tasks"][task]["datasets"])
    rows = []
    for run in runs:
        data = run["report"]["tasks"][task]
        rows.append({
            "name": run["name"], "backbone": run["backbone"], "mode": run["mode"],
            "values": {d: data["datasets"][d]["metrics"][metric] for d in domains},
            "mean_target": data["mean_target"]["metrics"][metric],
            "rPD": data["mean_target"]["rPD"][metric],
        })
    return {"task": task, "metric": metric, "source": first["source"], "domains": domains,
            "runs": rows}


def format_table(study):
    headers = ["backbone", "mode"] + study["domains"] + ["mean target", "rPD"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    rows = [
        [r["backbone"], r["mode"]] + [fmt(r["values"][d]) for d in study["domains"]]
        + [fmt(r["mean_target"]), fmt(r["rPD"])]
        for r in study["runs"]
    ]
    return tabulate(rows, headers=headers, tablefmt="pipe")


def write_study(study, output_dir):
    """Write study.json, study.md (the table) and study.png (grouped bars); returns the table."""
    os.makedirs(output_dir, exist_ok=True)
    table = format_table(study)
    atomic_write_bytes(os.path.join(output_dir, "study.json"), json.dumps(study, indent=2))
    atomic_write_bytes(
        os.path.join(output_dir, "study.md"),
        f"{study['metric']} per domain (source: {study['source']})\n\n{table}\n",
    )
    plot_study(study, os.path.join(output_dir, "study.png"))
    return table


def plot_study(study, path):
    """Grouped bars: one group per domain, one bar per run (NaN drawn as 0)."""
    domains, runs = study["domains"], study["runs"]
    fig = Figure(figsize=(max(8, 1.6 * len(domains) * max(1, len(runs)) / 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(runs)
    x = np.arange(len(domains))
    for k, run in enumerate(runs):
        values = [run["values"][d] for d in domains]
        heights = [v if v is not None and np.isfinite(v) else 0.0 for v in values]
        ax.bar(x + (k - (len(runs) - 1) / 2) * width, heights, width, label=run["name"])
    ax.set_xticks(x)
    ax.set_xticklabels(domains, rotation=20, ha="right")
    ax.set_ylabel(study["metric"])
    ax.set_title(f"Fine-tuning study: {study['metric']} per domain (source: {study['source']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    cfg = get_vlt_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    backbones = parse_backbones(args.backbone) if args.backbone else [None]
    if not backbones:
        raise FileNotFoundError("none of the --backbone weight files exists; nothing to compare")

    runs = []
    for backbone in backbones:
        arch = backbone[0] if backbone else cfg.MODEL.VLT_BACKBONE.ARCH
        for mode in args.modes:
            name = _run_name(arch, mode)
            overrides = run_overrides(mode, backbone, cfg.SOLVER.MAX_ITER, args.warmup_fraction)
            opts = args.opts + overrides
            out = os.path.join(args.output, name)
            path = train_one(args.train_script, args.config_file, out, opts, args.num_gpus)
            with open(path) as f:
                report = json.load(f)
            runs.append({"name": name, "backbone": arch, "mode": mode, "report": report})
    study = summarize(runs)
    table = write_study(study, args.output)
    print(table)
    print(f"study written to {os.path.abspath(args.output)} (study.json, study.md, study.png)")
    return study


if __name__ == "__main__":
    main()
