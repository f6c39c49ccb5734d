"""What a composed ``curvature-train`` config may hold, checked before anything is built, and building objects from
it so that what a class refuses names the config key.

:func:`check_config` checks the top-level keys (:data:`TOP_LEVEL`), the data and the model (their classes' own
``ARGUMENTS``) and the trainer's commonly typed keys (:data:`TRAINER`); :func:`instantiate` and
:func:`instantiate_group` turn Hydra's and OmegaConf's errors into a :class:`ConfigError` naming the key as typed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curvature_callback.experiments.arguments import AnyOf, ConfigError, Integer, OneOf, Real, Rule, check_arguments

__all__ = ["TOP_LEVEL", "TRAINER", "check_config", "instantiate", "instantiate_group"]

#: what the top-level keys of conf/train.yaml must be
TOP_LEVEL = {
    "seed": Rule(Integer(0, 2**32 - 1), "the seed of weights and batch order", 0),
    "threads": Rule(Integer(1, null=True), "torch CPU threads; null for torch's default", 1),
    "top_k": Rule(Integer(1), "samples shown in top_k.png", 25),
    "report": Rule(OneOf((True, False)), "also write report/index.html", "true"),
}
_BATCHES = Rule(AnyOf((Integer(0, null=True), Real(0.0, 1.0))), "a number of batches, or a fraction of them", 1.0)
#: what the trainer's commonly typed keys must be (Lightning's Trainer checks the rest when it is built)
TRAINER = {
    "max_epochs": Rule(Integer(-1, null=True), "-1: no limit", 40),
    "min_epochs": Rule(Integer(0, null=True), "", 1),
    "max_steps": Rule(Integer(-1), "-1: no limit", -1),
    "min_steps": Rule(Integer(0, null=True), "", 0),
    "num_nodes": Rule(Integer(1), "machines", 1),
    "log_every_n_steps": Rule(Integer(0, null=True), "0: never", 10),
    "check_val_every_n_epoch": Rule(Integer(1, null=True), "", 1),
    "accumulate_grad_batches": Rule(Integer(1), "", 1),
    "num_sanity_val_steps": Rule(Integer(-1, null=True), "-1: all", 2),
    "gradient_clip_val": Rule(Real(0.0, null=True), "", 1.0),
    **{f"limit_{split}_batches": _BATCHES for split in ("train", "val", "test", "predict")},
}


def _value(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]``, resolved; a missing (``???``) or unresolvable value is a :class:`ConfigError` naming it."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"Expected {key} to have a value, got one that cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}): set it on the command line ({key}=...).") from e


def _check_group(cfg: DictConfig, group: str, rules: Mapping[str, Rule]) -> None:
    """Check the keys of ``cfg.<group>`` (the top level for ``""``) that ``rules`` knows, named as typed."""
    node = cfg if not group else _value(cfg, group)
    if not isinstance(node, DictConfig):
        return
    prefix = f"{group}." if group else ""
    values = {key: _value(cfg, prefix + key) for key in rules if key in node}

    def fix(key: str, rule: Rule) -> str:
        example = f" ({prefix}{key}={rule.example}, say)" if rule.example is not None else ""
        return f"Fix it on the command line{example} or in the config that sets it."

    check_arguments(rules, values, name=lambda key: prefix + key, fix=fix)


def check_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built: the top-level keys (:data:`TOP_LEVEL`), the data and
    the model (the datamodule's and the module's own ``ARGUMENTS``, when their ``_target_`` has them) and the
    trainer (:data:`TRAINER`).

    Raises:
        ConfigError: naming the key as typed on the command line (``data.noise``), the value, what is expected
            and how to fix it.
    """
    _check_group(cfg, "", TOP_LEVEL)
    for group, what, choices in (("data", "a datamodule", "data=digits, data=cifar10"),
                                 ("model", "a LightningModule", "model=small_cnn, model=resnet18")):
        target = _value(cfg, f"{group}._target_") if group in cfg else None
        if not isinstance(target, str):
            continue
        try:
            cls = get_class(target)
        except Exception as e:  # Hydra wraps whatever the import raised
            raise ConfigError(f"Expected {group}._target_ to name {what} class, got {target!r}, which cannot be "
                              f"imported ({' '.join(str(e).split())}): choose one with {choices}, ...") from e
        _check_group(cfg, group, getattr(cls, "ARGUMENTS", {}))
    if "trainer" in cfg:
        _check_group(cfg, "trainer", TRAINER)


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """Hydra's ``instantiate(node)``; what its class refuses is a :class:`ConfigError` that names the config key."""
    try:
        return hydra_instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        found = re.search(r"full_key: (\S+)", str(e))  # Hydra names the entry that failed: model.net, data.root
        where = found.group(1) if found else key
        reason = (str(cause).splitlines() or [""])[0].rstrip(".")
        raise ConfigError(
            f"Could not build {where} from the config: {type(cause).__name__}: {reason}. Fix {where} on the command "
            "line or in the config that sets it."
        ) from e


def instantiate_group(group: Mapping | None, key: str) -> list[Any]:
    """Instantiate each named entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(e, f"{key}.{name}") for name, e in group.items() if isinstance(e, Mapping) and "_target_" in e]
