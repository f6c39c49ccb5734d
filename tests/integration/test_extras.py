"""The callback alone needs only the base dependencies (torch, lightning, numpy): the experiment app's libraries
are extras (`pip install curvature-callback[experiments]`)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: what the `experiments` extra brings, hidden from the callback's process (torchvision and matplotlib too are
#: extras, but torchmetrics imports them whenever their metadata says installed: the check of which of our
#: modules were loaded covers them)
EXTRAS = ("hydra", "omegaconf", "wandb", "sklearn", "jinja2", "submitit")

SCRIPT = textwrap.dedent(
    """
    import sys

    for name in {blocked!r}:
        sys.modules[name] = None  # as if not installed: import raises ModuleNotFoundError, find_spec says None
    import lightning as L
    import numpy as np
    from boring import Blobs, BlobsDM, Classifier
    from curvature_callback import CurvatureCallback, CurvatureStore, input_curvature

    cb = CurvatureCallback(dataset=Blobs(), n_vectors=1, batch_size=16, directory={directory!r})
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[cb]).fit(Classifier(), BlobsDM())
    store = CurvatureStore.open({directory!r})
    assert store.epochs == [0] and np.isfinite(store.mean).all() and (store.mean > 0).all()
    print("loaded:", sorted(m for m in {blocked!r} if sys.modules.get(m) is not None))
    print("ours:", sorted(m for m in sys.modules if m.startswith("curvature_callback")))
    """
)


def test_the_callback_runs_without_the_experiment_extras(tmp_path):
    code = SCRIPT.format(blocked=EXTRAS, directory=str(tmp_path / "store"))
    tests = str(Path(__file__).resolve().parents[1])  # tests/: boring.py and the other helpers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout
    # only the core layers and the glue: no analysis, plots, W&B helpers or experiment app
    ours = done.stdout.split("ours: ")[1].strip()
    loaded = set(ast.literal_eval(ours))
    allowed = {"curvature_callback", "curvature_callback.core", "curvature_callback.integration"}
    assert all(m in allowed or m.startswith(("curvature_callback.core.", "curvature_callback.integration."))
               for m in loaded), loaded
    assert "curvature_callback.integration.sinks" not in loaded  # W&B helpers load only with a W&B logger
    assert {"curvature_callback.core.estimator", "curvature_callback.core.store",
            "curvature_callback.integration.callback"} <= loaded
