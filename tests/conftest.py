"""Shared fixtures: no test leaves a W&B run open for the next one to log into; the offline CIFAR-10 copy of CI."""

import os
import sys
from pathlib import Path

import pytest

# CI lays a copy of CIFAR-10 beside the checkout; the package itself searches only the paths it is given
_CI_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
if "CURVATURE_CIFAR10_OFFLINE" not in os.environ and _CI_CIFAR10.is_dir():
    os.environ["CURVATURE_CIFAR10_OFFLINE"] = str(_CI_CIFAR10)


@pytest.fixture(autouse=True)
def _no_open_wandb_run():
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
