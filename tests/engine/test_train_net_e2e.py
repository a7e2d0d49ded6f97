"""End-to-end runs of ``train_net.py`` on a tiny SynthDG copy: train then evaluate every domain,
``kill -9`` then ``--resume``, and the 2-process CPU run (GLOO). Each starts real processes."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.engine.tiny_train_net import PREFIX, tiny_opts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "tests", "engine", "tiny_train_net.py")
CONFIG = os.path.join(REPO, "configs", "vltseg_tiny_synthdg.yaml")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_env(tmp_path_factory, tree_pythonpath):
    """Environment of the train_net.py processes: this tree's packages, a private tiny SynthDG
    copy, one thread, and the GPU visible if there is one."""
    env = dict(os.environ, VLT_TINY_SYNTHDG_ROOT=str(tmp_path_factory.mktemp("tiny_synthdg")),
               PYTHONPATH=tree_pythonpath, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _command(output_dir, *extra_opts, num_gpus=1, resume=False, eval_only=False):
    cmd = [sys.executable, DRIVER, "--config-file", CONFIG, "--num-gpus", str(num_gpus)]
    if resume:
        cmd.append("--resume")
    if eval_only:
        cmd.append("--eval-only")
    return cmd + list(extra_opts) + ["OUTPUT_DIR", str(output_dir)]


def _run(cmd, env, timeout=600):
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained_run(run_env, tmp_path_factory):
    """Train the tiny demo model for a few iterations and evaluate it on all six domains."""
    output = tmp_path_factory.mktemp("train_eval")
    _run(_command(output, *tiny_opts(), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
                  "SOLVER.IMS_PER_BATCH", "2"), run_env)
    return str(output)


def test_train_then_evaluate_writes_report(trained_run):
    with open(os.path.join(trained_run, "dg_report.json")) as f:
        report = json.load(f)
    assert report["source"] == f"{PREFIX}_source_val"
    assert len(report["targets"]) == 5
    domains = report["tasks"]["sem_seg"]["datasets"]
    assert set(domains) == {f"{PREFIX}_{d}_val" for d in
                            ("source", "palette", "fog", "night", "rain", "snow")}
    # Each domain's mIoU is the mean of its evaluated classes' IoU, and the summary is computed
    # from the domains: the numbers of the report come from this run's evaluation.
    for name, entry in domains.items():
        ious = [v for v in entry["per_class"].values() if v is not None and math.isfinite(v)]
        assert ious, f"{name}: no class was evaluated"
        assert entry["metrics"]["mIoU"] == pytest.approx(sum(ious) / len(ious), abs=1e-6), name
    source = domains[f"{PREFIX}_source_val"]["metrics"]["mIoU"]
    targets = [domains[name]["metrics"]["mIoU"] for name in report["targets"]]
    summary = report["summary"]
    assert source > 0.0  # six steps on the source scenes already get some class right
    assert summary["source"] == pytest.approx(source)
    assert summary["mean_target"] == pytest.approx(sum(targets) / len(targets))
    assert summary["rPD"] == pytest.approx(100.0 * summary["mean_target"] / source)
    assert os.path.getsize(os.path.join(trained_run, "dg_report.png")) > 1000
    # Training wrote metrics and checkpoints; "last" is the final model at the last iteration.
    iterations = [m["iteration"] for m in _metrics(trained_run) if "total_loss" in m]
    assert iterations and max(iterations) == 5
    with open(os.path.join(trained_run, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    final = torch.load(os.path.join(trained_run, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 5
    # Prediction overlays, one per domain.
    overlays = [
        os.path.join(root, name)
        for root, _, names in os.walk(trained_run) for name in names if name.endswith(".png")
        and name != "dg_report.png"
    ]
    assert len(overlays) >= 6, overlays


def test_kill_then_resume_reaches_the_same_final_iteration(run_env, tmp_path):
    opts = [*tiny_opts(test_domains=()), "SOLVER.MAX_ITER", "16", "SOLVER.CHECKPOINT_PERIOD", "4",
            "SOLVER.IMS_PER_BATCH", "2"]
    process = subprocess.Popen(_command(tmp_path, *opts), env=run_env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    checkpoint = tmp_path / "model_0000007.pth"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "the run never wrote its second checkpoint"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "model_final.pth").exists(), "killed too late to test resuming"

    result = _run(_command(tmp_path, *opts, resume=True), run_env)
    log = result.stdout + result.stderr
    assert "Starting training from iteration" in log
    start = int(log.split("Starting training from iteration")[1].split()[0])
    assert start >= 8, f"resumed from iteration {start}, expected after the killed checkpoint"
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 15
    # The lr schedule was restored and continued to the end, as in an uninterrupted run.
    scheduler = final["trainer"]["hooks"]["LRScheduler"]
    assert scheduler["last_epoch"] == 16


def test_two_cpu_processes_give_the_same_report(run_env, trained_run, tmp_path):
    weights = os.path.join(trained_run, "model_final.pth")
    reports = []
    for num_gpus in (1, 2):
        out = tmp_path / f"eval_{num_gpus}"
        _run(_command(out, *tiny_opts(), "MODEL.WEIGHTS", weights, num_gpus=num_gpus,
                      eval_only=True), run_env)
        with open(out / "dg_report.json") as f:
            reports.append(json.load(f)["tasks"])
    assert reports[0] == reports[1]


def test_two_cpu_processes_train_with_gradient_accumulation(run_env, tmp_path):
    """Batch 4 = 2 processes x 2 passes x 1 image: 3 iterations are 3 optimizer steps."""
    _run(_command(tmp_path, *tiny_opts(test_domains=("source", "night")), "SOLVER.MAX_ITER", "3",
                  "SOLVER.IMS_PER_BATCH", "4", "SOLVER.ACCUMULATION_STEPS", "2", num_gpus=2),
         run_env)
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
    assert os.path.isfile(tmp_path / "dg_report.json")
