"""The training-step benchmarks keep working on the CPU (smoke runs at tiny sizes) and refuse a
missing GPU clearly."""
import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import bench_demo_iter, bench_vltseg_step
from tests.paths import REPO


@pytest.mark.slow
def test_step_benchmark_runs_on_the_cpu(capsys):
    result = bench_vltseg_step.main(["--size", "64", "--iters", "1", "--tiny"])
    assert result["step"]["seconds"] > 0 and result["backbone"]["seconds"] > 0
    assert result["time_ratio"] == pytest.approx(
        result["step"]["seconds"] / result["backbone"]["seconds"]
    )
    assert result["backbone"]["tflops_per_s"] > 0 and result["backbone"]["mfu"] is None
    assert "ratio step / backbone" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_benchmark_runs_on_the_cpu():
    # As users run it: a fresh interpreter, where nothing has imported vltseg (and registered its
    # config keys) before the benchmark merges the demo config.
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_demo_iter", "--iters", "1", "--warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    median_ms = re.search(r"tiny SynthDG demo iteration .*: median ([0-9.]+) ms", run.stdout)
    assert median_ms and float(median_ms.group(1)) > 0, run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
@pytest.mark.parametrize("bench", [bench_vltseg_step, bench_demo_iter])
def test_cuda_without_a_gpu_is_a_clear_error(bench):
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.main(["--device", "cuda"])
