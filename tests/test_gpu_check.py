"""benchmarks/gpu_check.sh without a GPU: it says so and exits 0 (its GPU path runs on a GPU only)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU here" in done.stdout
    assert "== 1." not in done.stdout  # nothing else ran
