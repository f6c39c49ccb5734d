"""What a value of the experiments' configs must be, said once: the datamodules check their arguments with it on
construction, and ``curvature-train`` checks the composed config with it before it builds anything.

Each rule is a small value (:class:`Integer`, :class:`Real`, :class:`OneOf`, :class:`AnyOf`) that describes what
it expects; :func:`check_arguments` applies a table of them and names the value as its reader knows it
(``argument `noise``` to a Python caller, ``data.noise`` to a command-line user). Numpy-free and torch-free.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AnyOf", "ConfigError", "Integer", "OneOf", "Real", "Rule", "check_arguments"]


class ConfigError(ValueError):
    """A value of the composed config that the run cannot use: ``curvature-train`` prints it and exits with 2."""


def _is_int(value: Any) -> bool:
    """A Python or numpy integer, not a boolean (a config's ``true`` is no count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A Python or numpy integer or float, not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer:
    """An integer in ``[low, high]`` (``high`` None: no upper bound), or null when ``null``."""

    low: int
    high: int | None = None
    null: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        return _is_int(value) and value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        span = f">= {self.low}" if self.high is None else f"in [{self.low}, {self.high}]"
        return f"an integer {span}" + (" or null" if self.null else "")


@dataclass(frozen=True)
class Real:
    """A finite number (an integer too) from ``low`` to ``high`` (``None``: unbounded), ends included unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    null: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.null
        if not _is_real(value) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            span = f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            span = f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            span = f" {'<' if self.high_open else '<='} {self.high:g}"
        else:
            span = ""
        return f"a finite number{span}" + (" or null" if self.null else "")


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (compared by value and type: ``True`` is not ``1``)."""

    choices: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        if type(value).__name__ == "bool_":  # numpy's
            value = bool(value)
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        names = ["null" if c is None else "true" if c is True else "false" if c is False else repr(c)
                 for c in self.choices]
        return "one of " + ", ".join(names)


@dataclass(frozen=True)
class AnyOf:
    """What any of ``rules`` accepts (``limit_train_batches``: a count, or a fraction of the batches)."""

    rules: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)

    def describe(self) -> str:
        return ", or ".join(rule.describe() for rule in self.rules)


@dataclass(frozen=True)
class Rule:
    """What one argument must be: ``kind`` (the check), what the value means, and an example of a good one."""

    kind: Integer | Real | OneOf | AnyOf
    meaning: str = ""
    example: Any = None


def check_arguments(rules: Mapping[str, Rule], values: Mapping[str, Any],
                    name: Callable[[str], str] = lambda key: f"argument `{key}`",
                    fix: Callable[[str, Rule], str] | None = None) -> None:
    """Check each of ``values`` that has a rule in ``rules`` (the others are left to their reader).

    Args:
        rules: argument name to :class:`Rule`.
        values: argument name to value (a datamodule's keyword arguments, or a config group).
        name: how the message names an argument (default: ``argument `noise```).
        fix: the message's last sentence for an argument (default: none).

    Raises:
        ValueError: naming the argument, what was expected and the value given; :class:`ConfigError` when ``fix``
            is given (a config's value).

    Example:
        >>> check_arguments({"noise": Rule(Real(0, 1), "labels flipped")}, {"noise": 2.0})
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `noise` to be a finite number in [0, 1] (labels flipped), got 2.0.
    """
    for key, value in values.items():
        rule = rules.get(key)
        if rule is None or rule.kind.accepts(value):
            continue
        meaning = f" ({rule.meaning})" if rule.meaning else ""
        message = f"Expected {name(key)} to be {rule.kind.describe()}{meaning}, got {value!r}."
        if fix is None:
            raise ValueError(message)
        raise ConfigError(f"{message} {fix(key, rule)}")
