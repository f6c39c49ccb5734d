"""Whether a run's settings continue a store: scores average only under the settings that gave them their meaning
(:data:`~curvature_callback.core.settings.MEANING_KEYS`, ``N``), with the same channels, history, dataset and early
class-evidence window (``settings["evidence_window"]``, where asked). Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curvature_callback.core.channels.definitions import class_slots
from curvature_callback.core.settings import MEANING_KEYS, same_setting
from curvature_callback.core.store_format import StoreMismatchError

__all__ = ["check_settings"]


def check_settings(
    directory: Path,
    meta: Mapping[str, Any],
    n: int,
    settings: Mapping[str, Any],
    *,
    channels: Sequence[str] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    keep_history: bool | None = None,
    step_channels: Sequence[str] | None = None,
) -> None:
    """Raise :class:`~curvature_callback.core.store_format.StoreMismatchError` naming the first setting asked for
    that differs from the store's ``meta`` (meta.json of the store at ``directory``); an argument left None is not
    compared."""
    asked = {"n": n, **settings}
    for key in ("n", *MEANING_KEYS):  # N, and what the settings say changes a score's meaning
        if key in asked and key in meta and not same_setting(asked[key], meta[key]):
            # the loss is recorded by its identity (name and arguments), not a value one can set back
            fix = "pass the loss it names (or its `loss_id`)" if key == "loss" else f"set {key}={meta[key]!r}"
            raise StoreMismatchError(
                f"The store at {directory} was made with {key}={meta[key]!r}, this run asks "
                f"{key}={asked[key]!r}. Scores made with another {key} do not average: use another "
                f"`directory`, or {fix}."
            )
    if channels is not None and list(channels) != list(meta.get("channels", [])):
        raise StoreMismatchError(
            f"The store at {directory} holds channels {meta.get('channels')}, this run records "
            f"{list(channels)}: use another `directory`."
        )
    have_steps = list(meta["step_channels"])
    if (step_channels is not None and have_steps and list(step_channels)
            and class_slots(list(step_channels)) != class_slots(have_steps)):
        have, asked_k = class_slots(have_steps), class_slots(list(step_channels))
        raise StoreMismatchError(
            f"The store at {directory} keeps class evidence in {have} slot(s) per sample "
            f"(class_evidence={have}), this run asks for {asked_k} (class_evidence={asked_k}): evidence kept in "
            f"another number of slots does not continue. Resume with class_evidence={have} (step channels with "
            f"{have} class-evidence slots), or use another `directory`."
        )
    have_w, asked_w = int(meta.get("evidence_window", 0)), settings.get("evidence_window")
    if asked_w is not None and asked_w != have_w:
        made = (f"keeps the class evidence of its first {have_w} epoch(s) apart (evidence_window={have_w})" if have_w
                else "keeps no early-window class evidence (evidence_window=0: made without it, or before it existed)")
        raise StoreMismatchError(
            f"The store at {directory} {made}, this run asks for evidence_window={asked_w}: an early window of "
            f"another length does not continue. Resume with evidence_window={have_w} (or None: the store's own), "
            "or use another `directory`."
        )
    if step_channels is not None and list(step_channels) != have_steps:
        raise StoreMismatchError(
            f"The store at {directory} holds training-time channels {have_steps}, this run records "
            f"{list(step_channels)}: use another `directory` (or the record_training setting the store was made "
            "with)."
        )
    if keep_history and not meta.get("keep_history"):
        raise StoreMismatchError(
            f"The store at {directory} was made without history (keep_history=False), this run asks for "
            "it: use another `directory`, or keep_history=False."
        )
    old = meta.get("fingerprint") or {}
    for key, value in (fingerprint or {}).items():
        if key in old and old[key] != value:
            raise StoreMismatchError(
                f"The store at {directory} was made for another dataset ({key}: {old[key]!r}, now "
                f"{value!r}): use another `directory` for another dataset or other labels."
            )
