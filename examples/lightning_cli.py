"""CurvatureCallback from LightningCLI's command line, with no code change to the model or the data.

    python examples/lightning_cli.py fit --trainer.max_epochs=10 \\
        --trainer.callbacks+=curvature_callback.CurvatureCallback \\
        --trainer.callbacks.n_vectors=2 --trainer.callbacks.directory=curvature

``--trainer.callbacks+=CLASS`` appends a callback; the ``--trainer.callbacks.ARG=...`` after it set that callback's
arguments (``h``, ``n_vectors``, ``every_n_epochs``, ``directory``, ...). The store then lies in the trainer's log
dir (``lightning_logs/version_N/curvature``); read it with ``CurvatureStore.open(path)``. LightningCLI needs
``jsonargparse[signatures]`` (``pip install "lightning[pytorch-extra]"``).
"""

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).parent))
from minimal import Blobs, Classifier  # noqa: E402  (the model and data of examples/minimal.py)

if __name__ == "__main__":
    LightningCLI(Classifier, Blobs, seed_everything_default=0)
