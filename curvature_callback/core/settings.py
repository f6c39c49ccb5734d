"""What defines a score, validated, serialized and compared in one place (numpy and the standard library only,
so the store can use it without torch).

- ``check_int`` / ``check_float`` / ``check_bool``: the package's one check of each kind of argument; numpy
  scalars are accepted everywhere and every refusal reads the same.
- :class:`ScoreSettings`: the settings a store records; those in :data:`MEANING_KEYS` change what a score means,
  so a store refuses to add scores made with other values (:meth:`ScoreSettings.differences`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "MEANING_KEYS", "ScoreSettings", "check_bool", "check_callable", "check_float", "check_int", "check_settings",
    "same_setting",
]

#: settings that change what a score means (besides N and the labels, which the store checks itself); ``fast``:
#: TF32 moves values by ~5 %; ``pass_kind``: which values a pass computes (:data:`PASS_KINDS`)
MEANING_KEYS = ("pass_kind", "h", "n_vectors", "seed", "loss", "fast")
#: the kinds of scoring pass: curvature (n + 1 forward+backward per sample), gradient (one forward+backward: the
#: input-gradient norm and the eval-mode baselines, no curvature), forward (no backward: the eval-mode baselines)
PASS_KINDS = ("curvature", "gradient", "forward")


def check_int(name: str, value: object, low: int = 0, high: int | None = None, *, hint: str = "") -> int:
    """``value`` as a Python ``int`` if it is an integer (Python or numpy, not a bool) in ``[low, high)``.

    The one integer check of the package: the estimator, the callback and the feeding use it, so a numpy integer
    (from a config or an array) is accepted everywhere and every refusal reads the same.

    Raises:
        ValueError: naming the argument, the range expected and the value given.

    Example:
        >>> check_int("n_vectors", np.int64(2), 1)
        2
        >>> check_int("n_vectors", 2.5, 1)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `n_vectors` to be an integer >= 1, got 2.5.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < low or (high is not None and value >= high):
        span = f">= {low}" if high is None else f"in [{low}, {'2**64' if high == 2**64 else high})"
        raise ValueError(f"Expected argument `{name}` to be an integer {span}{hint}, got {value!r}.")
    return int(value)


def check_float(name: str, value: object, *, at_most: float | None = None, hint: str = "") -> float:
    """``value`` as a Python ``float`` if it is a finite real number ``> 0`` (and ``<= at_most``).

    Python and numpy numbers are accepted. A lower-precision numpy float is read as the shortest decimal that
    it rounds to (``np.float32(1e-3)`` is 0.001, not 0.0010000000474974513): the number its user wrote, which
    then matches a store made with ``h=1e-3``; float32 arithmetic rounds both to the same value.

    Raises:
        ValueError: naming the argument, the range expected and the value given.

    Example:
        >>> check_float("h", np.float32(1e-3))
        0.001
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    number = (float(str(value)) if isinstance(value, np.floating) else float(value)) if ok else math.nan
    if not math.isfinite(number) or number <= 0 or (at_most is not None and number > at_most):
        span = "a positive finite float" if at_most is None else f"a float in (0, {at_most:g}]"
        raise ValueError(f"Expected argument `{name}` to be {span}{hint}, got {value!r}.")
    return number


def check_bool(name: str, value: object) -> bool:
    """``value`` as a Python ``bool`` if it is one (or a numpy bool): settings are written to JSON metadata."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Expected argument `{name}` to be True or False, got {value!r}.")
    return bool(value)


def check_callable(name: str, value: object, fix: str) -> None:
    """Nothing if ``value`` is None or callable, else ``TypeError`` ending with ``fix``: a string such as
    ``loss_fn="cross_entropy"`` would otherwise be accepted until its first call, deep in a fit, as "'str' object is
    not callable".

    Example:
        >>> check_callable("loss_fn", "cross_entropy", "Pass a function.")
        Traceback (most recent call last):
        ...
        TypeError: Expected argument `loss_fn` to be a callable or None, got str 'cross_entropy'. Pass a function.
    """
    if value is not None and not callable(value):
        raise TypeError(f"Expected argument `{name}` to be a callable or None, got {type(value).__name__} "
                        f"{value!r:.80}. {fix}")


def check_settings(h: object, n_vectors: object, seed: object, *, min_vectors: int = 1) -> tuple[float, int, int]:
    """``(h, n_vectors, seed)`` as Python numbers, or ``ValueError`` for values that cannot define a score
    (``n_vectors`` at least ``min_vectors``: 0 is a gradient pass, no curvature)."""
    n_vectors = check_int("n_vectors", n_vectors, min_vectors, hint=" (the paper uses 10)")
    s = ScoreSettings(h=h, n_vectors=n_vectors, seed=seed,  # type: ignore[arg-type]
                      pass_kind="curvature" if n_vectors else "gradient")
    return s.h, n_vectors, s.seed


def same_setting(a: Any, b: Any) -> bool:
    """Whether a recorded setting equals an asked one (floats to 1e-12 relative: JSON round-trips them).

    Example:
        >>> same_setting(1e-3, 0.001), same_setting(1e-3, 1e-4), same_setting("ce", "ce")
        (True, False, True)
    """
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


@dataclass(frozen=True)
class ScoreSettings:
    """The settings of a curvature score, validated on construction (numpy scalars become Python numbers).

    Attributes:
        h: finite-difference step.
        n_vectors: Rademacher vectors per sample and scoring epoch.
        seed: seed of the vectors.
        loss: the loss's identity (its function and arguments, or the user's ``loss_id``).
        fast: TF32 allowed in the finite differences.
        fraction: the share of samples scored per pass (recorded; the mean stays exact, so it may change).
        pass_kind: which values the pass computes (:data:`PASS_KINDS`): ``"curvature"`` needs ``n_vectors >= 1``,
            ``"gradient"`` and ``"forward"`` ``n_vectors == 0`` (they draw no vectors).

    Example:
        >>> s = ScoreSettings(h=np.float32(1e-3), n_vectors=np.int64(2))
        >>> s.h, s.n_vectors, s.differences({**s.to_dict(), "n_vectors": 10})
        (0.001, 2, [('n_vectors', 10, 2)])
    """

    h: float = 1e-3
    n_vectors: int = 10
    seed: int = 0
    loss: str = "cross_entropy"
    fast: bool = False
    fraction: float = 1.0
    pass_kind: str = "curvature"

    def __post_init__(self) -> None:
        if self.pass_kind not in PASS_KINDS:
            raise ValueError(f"Expected the pass kind to be one of {list(PASS_KINDS)}, got {self.pass_kind!r}.")
        curvature = self.pass_kind == "curvature"
        checked = {
            "h": check_float("h", self.h, hint=" (the paper uses 1e-3)"),
            "n_vectors": check_int("n_vectors", self.n_vectors, int(curvature), None if curvature else 1,
                                   hint=" (the paper uses 10)" if curvature else f" for a {self.pass_kind} pass"),
            "seed": check_int("seed", self.seed, 0, 2**64),
            "fast": check_bool("fast", self.fast),
            "fraction": check_float("fraction", self.fraction, at_most=1.0),
        }
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"Expected the loss's identity as a non-empty string, got {self.loss!r}.")
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``meta.json`` and checkpoints."""
        return asdict(self)

    def differences(self, recorded: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(key, recorded value, this value)`` for each meaning setting that ``recorded`` holds with another value."""
        mine = self.to_dict()
        return [(k, recorded[k], mine[k]) for k in MEANING_KEYS
                if k in recorded and not same_setting(recorded[k], mine[k])]
