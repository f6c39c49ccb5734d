"""What identifies a loss: a stable string for everything that decides a loss's values (its function, arguments,
module state), so that a store averages scores of one loss only. Pure Python and torch, no Lightning."""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect

import numpy as np
import torch
import torch.nn.functional as F  # noqa: F401  (the doctests name it)
from torch import Tensor, nn  # noqa: F401  (nn: the doctests name it)

from curvature_callback.core.estimator import cross_entropy_per_sample

__all__ = ["loss_identity"]

#: how deep loss_identity follows nested objects (partials of partials, modules in modules) before giving up
_MAX_DEPTH = 8


def loss_identity(loss_fn: object) -> str | None:
    """A stable string for everything that decides a loss's values, or ``None`` when that cannot be known.

    A store's scores average only with scores of the same loss, so a resumed run compares this string, not
    just the loss's name:

    - ``None`` (the default loss) and :func:`cross_entropy_per_sample`: ``"cross_entropy"``.
    - a module-level named function: ``module.qualname``.
    - ``functools.partial``: the function's identity with its arguments, keywords sorted (nested partials too).
    - an ``nn.Module`` loss: ``module.ClassQualname(...)`` with its hyperparameters (public non-module
      attributes), parameters and buffers (as sha1 of bytes, dtype and shape) and submodules, sorted by name.
    - any other object: its class with all its attributes, if each of them renders.

    Values render deterministically: ``repr`` of ``None``, bools, ints, floats, strings, enums, and of
    tuples, lists and dicts of those; tensors and arrays by digest. ``None`` (unknown) for a lambda, a closure
    (``__closure__`` set, or ``<locals>`` in its qualified name), a bound method, or an object with any other
    attribute: their values can change while their name stays.

    Example:
        >>> loss_identity(None)
        'cross_entropy'
        >>> loss_identity(functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3))
        "functools.partial(torch.nn.functional.cross_entropy, label_smoothing=0.3, reduction='none')"
        >>> loss_identity(nn.CrossEntropyLoss(label_smoothing=0.3))
        "torch.nn.modules.loss.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.3, reduction='mean', weight=None)"
        >>> loss_identity(lambda o, t: o.sum(1)) is None
        True
    """
    if loss_fn is None or loss_fn is cross_entropy_per_sample:
        return "cross_entropy"
    return _render(loss_fn, 0)


def _render(value: object, depth: int) -> str | None:
    """A deterministic string for ``value``, ``None`` if there is none (see :func:`loss_identity`)."""
    if depth > _MAX_DEPTH:
        return None
    if value is None or type(value) in (bool, int, float, str, bytes):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{_named(type(value))}.{value.name}"
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return repr(value.item())  # np.float64(0.3) and 0.3 are one setting
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, (Tensor, np.ndarray)):
        return _digest(value)
    if type(value) in (tuple, list):
        parts = [_render(v, depth + 1) for v in value]
        if any(p is None for p in parts):
            return None
        if type(value) is list:
            return f"[{', '.join(parts)}]"
        return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"
    if type(value) is dict:
        return _keywords("dict", value, depth) if all(type(k) is str for k in value) else None
    if isinstance(value, functools.partial):
        func, args = _render(value.func, depth + 1), [_render(a, depth + 1) for a in value.args]
        keywords = _keywords("", value.keywords, depth)
        if func is None or keywords is None or any(a is None for a in args):
            return None
        inner = ", ".join([func, *args, *([keywords[1:-1]] if value.keywords else [])])
        return f"functools.partial({inner})"
    if isinstance(value, type) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return _named(value)
    if inspect.ismethod(value):
        return None  # a bound method's values depend on its object's whole state (a model's, often)
    if isinstance(value, nn.Module):
        state = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "training"}
        state.update(value._parameters)
        state.update(value._buffers)
        state.update(value._modules)
    elif hasattr(value, "__dict__") and not hasattr(type(value), "__slots__"):
        state = dict(vars(value))
    else:
        return None  # slots or native state: not readable here
    cls = _named(type(value))
    return None if cls is None else _keywords(cls, state, depth)


def _keywords(prefix: str, items: dict[str, object], depth: int) -> str | None:
    """``prefix(k1=v1, k2=v2)`` with the keys sorted, ``None`` if a value does not render."""
    parts = [(k, _render(v, depth + 1)) for k, v in sorted(items.items())]
    if any(p is None for _, p in parts):
        return None
    return f"{prefix}({', '.join(f'{k}={p}' for k, p in parts)})"


def _named(obj: object) -> str | None:
    """``module.qualname`` of a module-level function or class; ``None`` for lambdas and closures."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<lambda>" in qualname:
        return None
    if "<locals>" in qualname or getattr(obj, "__closure__", None) is not None:
        return None
    return f"{module}.{qualname}"


def _digest(array: Tensor | np.ndarray) -> str | None:
    """``tensor(sha1=..., dtype=..., shape=...)``: the values of a tensor or array without printing them."""
    try:
        if isinstance(array, Tensor):
            flat = array.detach().cpu().contiguous().reshape(-1)
            data, dtype, shape = flat.view(torch.uint8).numpy().tobytes(), str(array.dtype), tuple(array.shape)
        else:
            if array.dtype.hasobject:
                return None
            data, dtype, shape = np.ascontiguousarray(array).tobytes(), f"numpy.{array.dtype}", array.shape
    except (RuntimeError, TypeError, ValueError):
        return None  # sparse, quantized, meta tensors: no plain bytes
    sha1 = hashlib.sha1(data + f"|{dtype}|{shape}".encode()).hexdigest()
    return f"tensor(sha1={sha1}, dtype={dtype}, shape={shape})"
