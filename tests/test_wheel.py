"""The wheel works on its own: it ships conf/ inside the package, and curvature-train runs from it away from the
source tree (docs/DESIGN.md §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_curvature_train_runs_from_the_unpacked_wheel(tmp_path):
    dist = tmp_path / "dist"
    # no build isolation: CI has no index for a fresh setuptools; the dev extra installs it into the venv
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = dist.glob("curvature_callback-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "curvature_callback/conf/train.yaml" in names
    assert "curvature_callback/conf/data/digits.yaml" in names
    assert "curvature_callback/experiments/data/model_confusions.json" in names  # noise_kind=model's data
    assert "curvature_callback/analysis/templates/report.html.j2" in names  # the report's page
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    env = {k: v for k, v in os.environ.items() if k != "CURVATURE_CONF"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install's finder, which sys.meta_path consults last
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import curvature_callback.experiments.train as t; print(t.__file__, t.CONF_DIR)"],
        cwd=away, env=env, capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()
    package = site / "curvature_callback"
    assert where == [str(package / "experiments" / "train.py"), str(package / "conf")]

    out = tmp_path / "run"
    # the console script's own entry point, as `curvature-train` calls it
    proc = subprocess.run(
        [sys.executable, "-c", "from curvature_callback.experiments.train import main; main()", f"hydra.run.dir={out}",
         "trainer.max_epochs=1", "report=false", "trainer.enable_progress_bar=false"],
        cwd=away, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 1797
    assert (out / "curvature" / "meta.json").is_file()
    # the report, from the template inside the unpacked wheel
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from curvature_callback.experiments.report_cli import main; "
         "import curvature_callback.analysis.report as r; print(r.__file__); sys.exit(main())", str(out)],
        cwd=away, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == str(package / "analysis" / "report" / "__init__.py")
    assert "Curvature per class" in (out / "report" / "index.html").read_text()


def test_the_wheel_lists_every_package_of_the_tree():
    """pyproject.toml lists the packages (find cannot map conf/ into the package), so a new subpackage must be added
    there or the wheel ships without it: the quick check of what the slow wheel test above found once."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's toml reader")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "curvature_callback").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject.toml's [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == {"curvature_callback.conf"}, sorted(listed - found)
