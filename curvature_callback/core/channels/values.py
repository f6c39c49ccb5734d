"""What each channel's arrays may hold: the value rules a store checks at its open and at each read.

The store keeps arrays and asks these rules whether the values fit: a pass's channels against ``count.npy`` (sums
finite and 0 where never scored, ``mean == sum / count``, a latest value exactly where scored), the training-time
channels against ``train_seen`` (counts whole and within the presentations, the latest correctness 0 or 1, the latest
wrong epoch one of ``step_epochs``) and the class-evidence slots against each other (the early window's against its own
presentations, ``train_early_seen``). Numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curvature_callback.core.channels.definitions import (
    CLASS_MASS,
    CLASS_SLOT,
    EARLY,
    EARLY_MASS,
    EARLY_SEEN,
    EARLY_SLOT,
    SLOT,
    class_slots,
)
from curvature_callback.core.store_format import PRIMARY, StoreCorruptError

__all__ = ["COUNT_STEP_CHANNELS", "MASS_ULPS", "check_array", "check_values"]


#: what a training-time channel's sum must satisfy beyond being finite (names of :data:`~.definitions.STEP_CHANNELS`,
#: and the early window's presentations): event counts are whole, >= 0 and at most the presentations
COUNT_STEP_CHANNELS = ("train_seen", "train_correct", "train_forgetting", EARLY_SEEN)


#: how many float32 roundings a sample's total mass may carry beyond the presentations, besides one per epoch (the
#: float32 latest value, rounded at each commit): each presentation's float32 softmax (a few ulps), and a sample's
#: presentations within one epoch summed in float32 on the device (one ulp each, 64 presentations of one sample)
MASS_ULPS = 64


def check_values(directory: Path, meta: dict[str, Any], read: Any) -> None:
    """Check every array's values (:func:`check_array`), each read once with ``read(channel, kind)``."""
    for name in [PRIMARY, *meta["channels"]]:
        for kind in ("sum", "mean", "last"):
            check_array(directory, meta, name, kind, read(name, kind), read)
    for name in meta["step_channels"]:
        for kind in ("sum", "last"):
            check_array(directory, meta, name, kind, read(name, kind), read)


def check_array(directory: Path, meta: dict[str, Any], channel: str, kind: str, values: np.ndarray, read: Any) -> None:
    """Check what one array holds against the arrays it derives from and ``meta.json``, cheaply: sums finite and 0
    where nothing was added, ``mean == sum / count`` (NaN where never scored), the latest value finite exactly where
    something was added; for the training-time channels, counts whole and within the presentations, the latest
    correctness 0 or 1 and the latest wrong epoch one of ``step_epochs`` (or -1).

    Args:
        values: the array's values.
        read: ``read(channel, kind) -> np.ndarray``, the arrays it is checked against (``count``, the channel's sum,
            ``train_seen``'s sum), read consistently with ``values``.

    Raises:
        StoreCorruptError: naming the file and the first sample whose value does not fit.
    """

    def refuse(bad: np.ndarray, expected: str) -> None:
        where = np.flatnonzero(bad)
        if len(where):
            i = int(where[0])
            name = f"{kind}.npy" if channel == PRIMARY else f"{channel}_{kind}.npy"
            raise StoreCorruptError(
                f"{directory / name} is damaged: expected {expected}, got {values[i].item()!r} for sample {i} "
                f"({len(where)} sample(s) wrong). Restore the store from a backup or use another `directory`; a "
                "damaged store is refused, not repaired."
            )

    if channel == PRIMARY and meta["pass_kind"] != "curvature":  # a pass without curvature leaves it as created
        refuse(values != 0 if kind == "sum" else ~np.isnan(values),
               f"{'0' if kind == 'sum' else 'NaN'} everywhere (a {meta['pass_kind']} pass computes no curvature)")
        return
    if channel not in meta["step_channels"]:  # a channel of the pass: count.npy says which samples were scored
        count = read(PRIMARY, "count")
        scored = count > 0
        if kind == "sum":
            refuse(~np.isfinite(values) | (~scored & (values != 0)), "finite sums, 0 where count.npy says never scored")
        elif kind == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                want = read(channel, "sum") / count
            # the commit writes mean = sum / count from the same float64 values: equal up to the last bit
            refuse(np.where(scored, ~(np.abs(values - want) <= 1e-12 * np.abs(want)), ~np.isnan(values)),
                   "sum.npy / count.npy (NaN where never scored)")
        elif kind == "last":
            refuse(np.where(scored, ~np.isfinite(values), ~np.isnan(values)),
                   "a finite latest value where count.npy says scored, NaN where never")
        return
    seen = None if "train_seen" not in meta["step_channels"] else (
        values if (channel, kind) == ("train_seen", "sum") else read("train_seen", "sum"))
    slot = SLOT.fullmatch(channel) or EARLY.fullmatch(channel)
    if kind == "sum":
        refuse(~np.isfinite(values), "finite sums")
        if slot and not slot.group(1):  # a sum of class ids (-1 for an empty slot) over epochs
            refuse(values != np.round(values), "whole sums of class ids")
        if slot and slot.group(1):
            refuse(values < 0, "sums >= 0 of probability masses")
        if channel in COUNT_STEP_CHANNELS:
            refuse((values < 0) | (values != np.round(values)), "whole counts >= 0")
        if seen is not None:
            if channel in COUNT_STEP_CHANNELS:
                refuse(values > seen, "at most the presentations in train_seen_sum.npy")
            refuse((seen == 0) & (values != 0), "0 where train_seen_sum.npy says never seen")
    elif kind == "last":
        refuse(np.isinf(values), "a finite latest value (NaN where never seen)")
        if seen is not None:
            refuse(np.where(seen > 0, np.isnan(values), ~np.isnan(values)),
                   "a latest value where train_seen_sum.npy says seen, NaN where never")
        if channel == "train_last_correct":
            refuse(~np.isnan(values) & (values != 0) & (values != 1), "0 or 1 (NaN where never seen)")
        if channel == "train_wrong_epoch":
            allowed = np.array([-1, *meta["step_epochs"]], dtype=np.float64)
            refuse(~np.isnan(values) & ~np.isin(values, allowed),
                   f"-1 or one of meta.json's step_epochs {meta['step_epochs']}")
        if slot:
            early = slot.re is EARLY  # the window's slots: within the window's own presentations
            _check_slot(meta, int(slot.group(2)), bool(slot.group(1)), values, read,
                        read(EARLY_SEEN, "sum") if early and seen is not None else seen, refuse,
                        (EARLY_SLOT, EARLY_MASS, EARLY_SEEN) if early else (CLASS_SLOT, CLASS_MASS, "train_seen"))


def _check_slot(meta: dict[str, Any], j: int, mass: bool, values: np.ndarray, read: Any, seen: np.ndarray | None,
                refuse: Any, names: tuple[str, str, str]) -> None:
    """Check slot ``j``'s latest class (``mass`` False) or mass against the slots before it: a class id whole and
    >= -1, distinct from the classes before it, empty after an empty slot; a mass >= 0, 0 in an empty slot, at most
    the mass before it, and the last slot's total at most the presentations ``seen`` (with the float32 rounding of
    :data:`MASS_ULPS`, one more ulp per epoch). ``names``: the slots' class and mass names and the presentations'
    channel (the whole run's, or the early window's)."""
    slot_name, mass_name, presentations = names
    known = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        if not mass:
            refuse(known & ((values != np.round(values)) | (values < -1)), "a whole class id >= -1 (-1: an empty slot)")
            for i in range(j):
                before = read(slot_name.format(i), "last")
                refuse(known & (values >= 0) & (values == before), f"a class other than slot {i}'s")
                refuse(known & (before == -1) & (values != -1), f"an empty slot (-1) after slot {i}'s empty one")
            return
        refuse(known & (values < 0), "a probability mass >= 0")
        refuse(known & (read(slot_name.format(j), "last") == -1) & (values != 0),
               f"0 where {slot_name.format(j)}_last.npy says the slot is empty")
        if j:
            refuse(known & (values > read(mass_name.format(j - 1), "last")),
                   f"at most slot {j - 1}'s mass (slots by mass, descending)")
        k = class_slots(meta["step_channels"])
        if j == k - 1 and seen is not None:
            total = sum(np.asarray(read(mass_name.format(i), "last"), dtype=np.float64) for i in range(k - 1))
            total = total + values.astype(np.float64)
            ulps = MASS_ULPS + len(meta["step_epochs"])
            refuse(known & (total > seen * (1 + ulps * float(np.finfo(np.float32).eps))),
                   f"a total mass over slots 0..{j} at most the presentations in {presentations}_sum.npy (softmax "
                   f"probabilities sum to 1 per presentation; {ulps} float32 ulps allowed for rounding)")
