"""The callback's one DDP rule for work that only rank 0 does: rank 0 does it, and every rank raises the same error.

Rank 0 alone opens and commits the store; were it alone to raise, the other ranks would wait forever at their next
collective. :func:`on_rank_zero` runs the work on rank 0 and then makes one collective on every rank
(:func:`raise_together`), so that every rank goes on, or every rank raises, together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import lightning.pytorch as pl

from curvature_callback.core.store import StoreMismatchError

__all__ = ["on_rank_zero", "raise_together"]

T = TypeVar("T")

#: exception types an error on rank 0 is raised as on every rank (the nearest one in the error's MRO)
_SHARED_ERRORS = {e.__name__: e for e in (StoreMismatchError, FileNotFoundError, FileExistsError, OSError,
                                          TypeError, ValueError, RuntimeError)}


def raise_together(trainer: pl.Trainer, caught: BaseException | None) -> None:
    """Every rank raises what rank 0 caught (or nothing): one collective, on every rank.

    The type's name and the message travel separately, so the other ranks raise the same type with the plain
    message; rank 0 re-raises its own exception, traceback included.
    """
    sent = None
    if caught is not None:
        kind = next(c.__name__ for c in (*type(caught).__mro__, RuntimeError) if c.__name__ in _SHARED_ERRORS)
        sent = (kind, str(caught))
    received = trainer.strategy.broadcast(sent, src=0)
    if caught is not None:
        raise caught
    if received is not None:
        kind, message = received
        raise _SHARED_ERRORS[kind](message)


def on_rank_zero(trainer: pl.Trainer, work: Callable[..., T], *args: Any) -> T | None:
    """``work(*args)`` on global rank 0, then one collective on every rank: an error it raised is raised on all.

    Args:
        trainer: the trainer whose ranks take part (every one of them must call this).
        work: what rank 0 does (opening or committing the store).
        *args: its arguments.

    Returns:
        What ``work`` returned, on rank 0; None on the other ranks.
    """
    result: T | None = None
    caught: BaseException | None = None
    if trainer.is_global_zero:
        try:
            result = work(*args)
        except Exception as e:  # raised on every rank below: one rank alone raising would hang the others
            caught = e
    raise_together(trainer, caught)
    return result
