"""End-to-end runs of ``train_net.py`` on a tiny SynthDG copy: train then evaluate every domain,
``kill -9`` then ``--resume``, and the 2-process CPU run (GLOO). Each starts real processes."""
import json
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
def synthdg_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_synthdg"))


def _command(output_dir, *extra_opts, num_gpus=1, resume=False, eval_only=False):
    cmd = [sys.executable, DRIVER, "--config-file", CONFIG, "--num-gpus", str(num_gpus)]
    if resume:
        cmd.append("--resume")
    if eval_only:
        cmd.append("--eval-only")
    return cmd + list(extra_opts) + ["OUTPUT_DIR", str(output_dir)]


def _env(synthdg_root):
    env = dict(os.environ, VLT_TINY_SYNTHDG_ROOT=synthdg_root, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd, synthdg_root, timeout=600):
    result = subprocess.run(cmd, env=_env(synthdg_root), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained_run(synthdg_root, tmp_path_factory):
    """Train the tiny demo model for a few iterations and evaluate it on all six domains."""
    output = tmp_path_factory.mktemp("train_eval")
    _run(_command(output, *tiny_opts(), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
                  "SOLVER.IMS_PER_BATCH", "2"), synthdg_root)
    return str(output)


def test_train_then_evaluate_writes_report(trained_run):
    with open(os.path.join(trained_run, "dg_report.json")) as f:
        report = json.load(f)
    assert report["source"] == f"{PREFIX}_source_val"
    assert len(report["targets"]) == 5
    domains = report["tasks"]["sem_seg"]["datasets"]
    assert set(domains) == {f"{PREFIX}_{d}_val" for d in
                            ("source", "palette", "fog", "night", "rain", "snow")}
    for entry in domains.values():
        assert 0.0 <= entry["metrics"]["mIoU"] <= 100.0
    assert "mean_target" in report["summary"] and "rPD" in report["summary"]
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


def test_kill_then_resume_reaches_the_same_final_iteration(synthdg_root, tmp_path):
    opts = [*tiny_opts(test_domains=()), "SOLVER.MAX_ITER", "16", "SOLVER.CHECKPOINT_PERIOD", "4",
            "SOLVER.IMS_PER_BATCH", "2"]
    process = subprocess.Popen(_command(tmp_path, *opts), env=_env(synthdg_root), cwd=REPO,
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

    result = _run(_command(tmp_path, *opts, resume=True), synthdg_root)
    log = result.stdout + result.stderr
    assert "Starting training from iteration" in log
    start = int(log.split("Starting training from iteration")[1].split()[0])
    assert start >= 8, f"resumed from iteration {start}, expected after the killed checkpoint"
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 15
    # The lr schedule was restored and continued to the end, as in an uninterrupted run.
    scheduler = final["trainer"]["hooks"]["LRScheduler"]
    assert scheduler["last_epoch"] == 16


def test_two_cpu_processes_give_the_same_report(synthdg_root, trained_run, tmp_path):
    weights = os.path.join(trained_run, "model_final.pth")
    reports = []
    for num_gpus in (1, 2):
        out = tmp_path / f"eval_{num_gpus}"
        _run(_command(out, *tiny_opts(), "MODEL.WEIGHTS", weights, num_gpus=num_gpus,
                      eval_only=True), synthdg_root)
        with open(out / "dg_report.json") as f:
            reports.append(json.load(f)["tasks"])
    assert reports[0] == reports[1]


def test_two_cpu_processes_train(synthdg_root, tmp_path):
    _run(_command(tmp_path, *tiny_opts(test_domains=("source", "night")), "SOLVER.MAX_ITER", "3",
                  "SOLVER.IMS_PER_BATCH", "2", num_gpus=2), synthdg_root)
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2
    assert os.path.isfile(tmp_path / "dg_report.json")
