"""Every script in examples/ runs as it is and passes its own checks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curvature_callback import CurvatureStore

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
#: the command line each script is run with, as its docstring shows it
ARGS = {
    "lightning_cli.py": ["fit", "--trainer.max_epochs=3", "--trainer.callbacks+=curvature_callback.CurvatureCallback",
                         "--trainer.callbacks.n_vectors=2", "--trainer.callbacks.directory=curvature",
                         "--trainer.enable_progress_bar=false", "--trainer.logger=false"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    if script.name == "lightning_cli.py":  # the callback added from the command line scored every epoch
        (meta,) = tmp_path.rglob("curvature/meta.json")
        store = CurvatureStore.open(meta.parent)
        assert store.epochs == [0, 1, 2] and store.meta["n_vectors"] == 2
        assert (np.asarray(store.count) == 3).all() and len(store.mean) == 400
