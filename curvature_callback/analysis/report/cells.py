"""Values as the report's page shows them: a figure as a data URI, a metric, a number, a label with its class name,
a text; plain strings the template escapes."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["figure", "fmt", "label", "num", "text"]


def figure(path: Path, alt: str) -> dict[str, str]:
    """A PNG the report just wrote, as an ``<img>``'s source (a data URI: the page needs no file beside it)."""
    return {"src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), "alt": alt}


def fmt(v: Any) -> str:
    """A metric for a table cell: three decimals, ``nan``, or ``n/a`` when there is none."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def label(c: Any, names: Sequence[str] | None) -> str:
    """A label, with its class name when there are names."""
    return f"{c} ({names[int(c)]})" if names is not None else str(c)


def text(value: Any) -> str:
    """A value for a table cell: empty for none, a list joined by ``; ``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "; ".join(str(v) for v in value)
    return str(value)


def num(v: float, decimals: int | None = None) -> str:
    """A value for a table cell: ``n/a`` where there is none, else 4 significant digits (or ``decimals``)."""
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if decimals is None else f"{v:.{decimals}f}"
