"""Shared fixtures: no test leaves a W&B run open for the next one to log into."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_open_wandb_run():
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
