"""``curvature-train`` under Lightning's ``strategy=ddp``, which starts the script again for each further rank:
:func:`children_repeat_this_job` makes that command rerun exactly this job in this run folder (also inside a ``-m``
sweep), and :func:`forget_ddp` lets a sweep's next job start its own ranks."""

from __future__ import annotations

import os
import sys

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

__all__ = ["children_repeat_this_job", "forget_ddp"]

#: what Lightning's DDP launcher sets in its own environment; a sweep's next job must not inherit it
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
#: the environment before any job (read when curvature-train imports this module, before its first job)
_ENV_AT_START = {k: os.environ.get(k) for k in _DDP_ENV}


def children_repeat_this_job(output_dir: str) -> None:
    """Make Lightning's DDP relaunch (``sys.argv`` plus ``hydra.run.dir=<hydra.run.dir>``) rerun this very job.

    ``hydra.run.dir`` may hold ``${now:...}``, which a child resolves later, to another folder: pin it to this
    job's resolved directory. In a ``-m`` sweep the argv holds the whole sweep: replace it with this job's own
    overrides, so each child runs one job (in run mode) rather than the sweep.
    """
    run_cfg = HydraConfig.instance().cfg.hydra.run
    with read_write(run_cfg):
        run_cfg.dir = output_dir
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    keep, args = [sys.argv[0]], iter(sys.argv[1:])
    for arg in args:  # keep where the configs come from; drop -m and the sweep's override lists
        name = arg.split("=", 1)[0]
        if name in ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir"):
            keep += [arg] if "=" in arg else [arg, next(args, "")]
    sys.argv = keep + list(HydraConfig.get().overrides.task)


def forget_ddp() -> None:
    """After a job: drop the process group and the launcher's environment, so that the next job of a sweep
    (same process) starts its own ranks instead of believing it was launched by them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in _ENV_AT_START.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
