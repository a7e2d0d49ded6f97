"""Running one measurement in a fresh process, so that its peak memory is its own."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

__all__ = ["REPO_ROOT", "run_worker"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_worker(module: str, argv: List[str]) -> dict:
    """
    Run ``python -m <module> --worker <argv...>`` from the repository root and return the JSON
    object the worker prints on its last line.

    Raises:
        RuntimeError: the worker failed; the message ends with its stderr.
    """
    cmd = [sys.executable, "-m", module, "--worker", *map(str, argv)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {argv[0]!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
