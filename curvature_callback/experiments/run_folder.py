"""Where a ``curvature-train`` run writes, and the refusal of a symbolic link there.

:func:`check_run_dir` refuses a link where the run writes (:data:`RUN_FILES`, :data:`REVIEW_FILES`,
:data:`RUN_FOLDERS`) before anything is built; :class:`RefuseLinks`, a Hydra callback in ``conf/train.yaml``, does so
before Hydra writes ``.hydra/`` and its log. Every file a run writes goes through
:mod:`curvature_callback.core.safe_paths` besides (never through a link made meanwhile).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from curvature_callback.core import safe_paths
from curvature_callback.experiments.arguments import ConfigError

__all__ = ["REVIEW_FILES", "RUN_FILES", "RUN_FOLDERS", "RefuseLinks", "check_run_dir"]

#: what a run writes directly in its folder: never through a link there (``*.log``: Hydra's log, one per rank)
RUN_FILES = ("scores.csv", "label_issues.csv", "metrics.json", "labels.npz", "histogram.png", "top_k.png", "*.log",
             "csv", "tensorboard", "wandb", "lightning_logs")
#: the folders a run writes into: no link anywhere under them (the store, Hydra's, the report's, checkpoints)
RUN_FOLDERS = (".hydra", "curvature", "report", "checkpoints")
#: what the review loop writes in the run folder: the images its report shows, the corrections a person edits
REVIEW_FILES = ("review_images.npy", "review_indices.npy", "corrections.csv")


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder with a symbolic link where the run writes (:data:`RUN_FILES`, :data:`REVIEW_FILES`,
    :data:`RUN_FOLDERS`).

    The folder itself may be a link (the user named it), and so may other entries of it (a linked dataset).

    Raises:
        safe_paths.UnsafePathError: naming the link, where it leads and the fix; nothing was written.
        ConfigError: ``run_dir`` is there but is no folder.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"Expected the run folder {run_dir} to be a folder, or nothing there, but it is a file: "
                          "choose another one (hydra.run.dir=...), or move the file away.")
    safe_paths.refuse_links(run_dir, RUN_FILES + REVIEW_FILES, RUN_FOLDERS, fix=(
        "Remove the link, or run in a fresh folder (hydra.run.dir=...); a run writes its outputs only as files of "
        "its own folder."))


class RefuseLinks(HydraCallback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): :func:`check_run_dir` before Hydra writes ``.hydra/``
    and its log into the run folder (for ``-m``: ``multirun.yaml`` and the job folders already there).

    A refusal is printed and ends the program with exit status 2: Hydra would print a traceback.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(lambda: check_run_dir(Path(str(config.hydra.run.dir))))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def check() -> None:
            sweep = Path(str(config.hydra.sweep.dir))
            safe_paths.refuse_links(sweep, ("multirun.yaml",), fix="Remove the link, or sweep into a fresh folder "
                                    "(hydra.sweep.dir=...).")
            for job in sorted(sweep.iterdir()) if sweep.is_dir() else ():
                if job.is_dir() and not job.is_symlink():
                    check_run_dir(job)

        self._check(check)

    @staticmethod
    def _check(check: Any) -> None:
        try:
            check()
        except ValueError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"curvature-train: {e}", file=sys.stderr)
            raise SystemExit(2) from None
