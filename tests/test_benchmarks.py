"""The prepared GPU script of issue 5 runs every step on the CPU at tiny sizes (SMOKE=1): its code paths work
before a GPU session spends device time on them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from offline import needs_offline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_offline
def test_gpu_issue5_script_runs_every_step_in_smoke_mode(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PY": sys.executable,
           "CURVATURE_DATA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_issue5.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["estimator.txt", "fidelity.txt", "layout.txt", "machine.txt",
                                                      "overhead.txt"]
    for step, row in [("estimator", "| SmallCNN | cpu | float32 + channels_last |"),
                      ("layout", "| CIFAR ResNet18 | 16 |"),
                      ("fidelity", "| fp32 | 2 | 1 | 1/1 | 1.000 |"),
                      ("overhead", "| + published-style loop, n=10, every epoch |")]:
        text = (out / f"{step}.txt").read_text()
        assert f"## {step}: exit 0 after" in text, text[-3000:]
        assert row in text, text[-3000:]
