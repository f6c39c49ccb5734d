"""The callback's arguments and their checks: what ``CurvatureCallback(...)`` accepts, said once.

Each check raises where the argument is given, with what was expected, what came and the fix (as torchmetrics'
``_arg_validation``): a wrong value is refused at construction, not deep in a fit. The score's own settings
(``h``, ``seed``, ``fraction``, ...) are checked by :class:`~curvature_callback.core.settings.ScoreSettings`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch import Tensor

from curvature_callback.core.estimator import LossFn
from curvature_callback.core.loss_identity import loss_identity
from curvature_callback.core.settings import PASS_KINDS, ScoreSettings, check_callable, check_int

__all__ = ["BatchToInputs", "PassKind", "check_evidence_window", "check_objects", "check_recording",
           "default_batch_to_inputs", "pass_of", "resolve_loss", "score_settings"]

BatchToInputs = Callable[[Any], tuple[Tensor, Tensor]]
PassKind = Literal["curvature", "gradient", "forward"]


def default_batch_to_inputs(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y, ...)`` tuples and lists, or dicts with ``x``/``y``, ``input``/``target`` or ``image``/``label``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for a, b in (("x", "y"), ("input", "target"), ("inputs", "targets"), ("image", "label"), ("images", "labels")):
            if a in batch and b in batch:
                return batch[a], batch[b]
    raise TypeError(
        f"Cannot take (inputs, targets) from a batch of type {type(batch).__name__}: expected a tuple (x, y, ...) or "
        "a dict with keys x/y. Pass `batch_to_inputs=fn` with fn(batch) -> (x, y), a named function so it pickles."
    )


def pass_of(pass_kind: object, n_vectors: object) -> tuple[str, object]:
    """``(pass kind, n_vectors)`` from the callback's arguments: ``n_vectors=0`` alone is a gradient pass; a gradient
    or forward pass draws no vectors; a curvature pass draws ``n_vectors`` (None: the paper's 10).

    Example:
        >>> pass_of(None, None), pass_of(None, 0), pass_of("forward", None), pass_of(None, 3)
        (('curvature', 10), ('gradient', 0), ('forward', 0), ('curvature', 3))
    """
    if pass_kind is not None and pass_kind not in PASS_KINDS:
        raise ValueError(f"Expected argument `pass_kind` to be one of {list(PASS_KINDS)} or None, got {pass_kind!r}.")
    zero = n_vectors is not None and not isinstance(n_vectors, bool) and n_vectors == 0
    kind = pass_kind or ("gradient" if zero else "curvature")
    if kind == "curvature":
        if zero:
            raise ValueError("Expected n_vectors >= 1 for pass_kind='curvature' (a curvature needs vectors), got 0. "
                             "Drop pass_kind for a gradient pass (n_vectors=0), or set n_vectors (the paper: 10).")
        return kind, 10 if n_vectors is None else n_vectors
    if not (n_vectors is None or zero):
        raise ValueError(f"Expected n_vectors=0 or None with pass_kind={kind!r} (it draws no vectors), got "
                         f"{n_vectors!r}. Drop n_vectors, or use pass_kind='curvature'.")
    return kind, 0


def resolve_loss(loss_fn: LossFn | None, loss_id: str | None) -> str:
    """What a store records as the loss: ``loss_id`` if given, else :func:`loss_identity`; a loss whose
    identity cannot be known needs a ``loss_id``."""
    if loss_id is not None:
        if not isinstance(loss_id, str) or not loss_id.strip():
            raise ValueError(f"Expected `loss_id` to be a non-empty string such as 'my_loss_v1', got {loss_id!r}.")
        return loss_id
    identity = loss_identity(loss_fn)
    if identity is None:
        qualname = getattr(loss_fn, "__qualname__", "")
        kind = ("a lambda" if "<lambda>" in qualname else
                "a closure" if "<locals>" in qualname or getattr(loss_fn, "__closure__", None) is not None else
                "a bound method" if inspect.ismethod(loss_fn) else
                f"an object of type {type(loss_fn).__qualname__} whose state cannot be written down deterministically")
        raise ValueError(
            f"Cannot tell from `loss_fn` ({kind}) which loss it computes: its values can change while its name "
            "stays, so a resumed store could average two different losses. Pass `loss_id=\"my_loss_v1\"` (a name "
            "that changes whenever the loss's values would change), or use a named module-level function or a "
            "functools.partial of one, e.g. `functools.partial(F.cross_entropy, reduction=\"none\", "
            "label_smoothing=0.1)`."
        )
    return identity


def score_settings(*, h: float, n_vectors: int | None, pass_kind: str | None, seed: int, loss_fn: LossFn | None,
                   loss_id: str | None, fast: bool, fraction: float) -> ScoreSettings:
    """What defines the score, checked once (numpy numbers become Python ones: they go to JSON and checkpoints)."""
    kind, vectors = pass_of(pass_kind, n_vectors)
    return ScoreSettings(h=h, n_vectors=vectors, seed=seed, loss=resolve_loss(loss_fn, loss_id), fast=fast,
                         fraction=fraction, pass_kind=kind)


def check_objects(dataset: object, directory: object, loss_fn: object, batch_to_inputs: object) -> None:
    """The arguments that are objects: functions callable, the dataset map-style, the directory a path."""
    check_callable("loss_fn", loss_fn, "Pass a function loss_fn(outputs, targets) -> [B] per-sample losses (e.g. "
                   "functools.partial(F.cross_entropy, reduction='none', label_smoothing=0.1)), or None for "
                   "cross-entropy.")
    check_callable("batch_to_inputs", batch_to_inputs, "Pass a named function fn(batch) -> (x, y), or None for "
                   "batches (x, y, ...) and dicts with x/y.")
    if dataset is not None and not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"Expected argument `dataset` to be a map-style dataset (len() and dataset[i], indexed 0..N-1), got "
            f"{type(dataset).__name__} {dataset!r:.80}. Pass a torch.utils.data.Dataset (e.g. the training set "
            "with the evaluation transform), or None to score the training loader's dataset."
        )
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"Expected argument `directory` to be a folder path (str or os.PathLike), got "
            f"{type(directory).__name__} {directory!r:.80}. Pass e.g. directory=\"curvature\" (under the trainer's "
            "log dir) or an absolute path."
        )


def check_recording(pass_kind: str, record_outputs: bool, record_training: bool, score_curvature: bool) -> None:
    """What is recorded: a pass without curvature needs ``record_outputs``; the callback must record something."""
    if pass_kind != "curvature" and not record_outputs:
        raise ValueError(f"Expected record_outputs=True with pass_kind={pass_kind!r}: a {pass_kind} pass computes "
                         "nothing but the channels record_outputs stores. Keep record_outputs=True, or pass "
                         "score_curvature=False for no pass at all.")
    if not (record_training or score_curvature):
        raise ValueError("Expected record_training=True or score_curvature=True, got both False: the callback "
                         "would record nothing. Keep one (the training-time signals alone: the digits fit took 1.11x "
                         "training alone, docs/PERFORMANCE.md).")


def check_evidence_window(evidence_window: object, class_evidence: int | None, record_training: bool) -> int | None:
    """``evidence_window`` as an int >= 0 (None: resolved at the start of training), refused where there is no class
    evidence to keep apart: a window > 0 with ``class_evidence=0`` or ``record_training=False``.

    Example:
        >>> check_evidence_window(None, 0, True), check_evidence_window(4, None, True)
        (None, 4)
    """
    window = None if evidence_window is None else check_int(
        "evidence_window", evidence_window, 0, hint=" (the first training epochs whose class evidence is kept apart)")
    if window and (class_evidence == 0 or not record_training):
        got = "class_evidence=0" if record_training else "record_training=False"
        raise ValueError(
            f"Expected class evidence with evidence_window={window} (the window keeps the class evidence of the first "
            f"{window} epoch(s) apart), got {got}: the training steps' class evidence is not recorded. Drop "
            "evidence_window (None: a window only where class evidence is kept) or set it to 0, or keep "
            f"{'class_evidence >= 1' if record_training else 'record_training=True'}."
        )
    return window
