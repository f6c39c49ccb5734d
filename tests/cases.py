"""Test cases written as data, with readable ids."""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)


def mean_reduced(outputs, targets):
    return F.cross_entropy(outputs, targets)


def sum_reduced(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="sum")


def column_loss(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")[:, None]


def mlp(d=6, classes=4):
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))


X = torch.randn(5, 6)
Y = torch.randint(0, 4, (5,))

# (id, call kwargs overriding (model, inputs, targets, ...), exception type, regex the message must match)
ERROR_CASES = [
    ("integer-inputs", dict(inputs=torch.randint(0, 10, (5, 6))), TypeError, r"floating.*embedding"),
    ("inputs-not-tensor", dict(inputs=[[0.0] * 6] * 5), TypeError, r"`inputs`.*torch.Tensor"),
    ("targets-length", dict(targets=Y[:3]), ValueError, r"one target per input.*B=5.*3"),
    ("mean-reduced-loss", dict(loss_fn=mean_reduced), ValueError,
     r"per-sample losses of shape \[5\].*reduction='none'"),
    ("sum-reduced-loss", dict(loss_fn=sum_reduced), ValueError, r"per-sample.*got shape \[\]"),
    ("column-loss", dict(loss_fn=column_loss), ValueError, r"per-sample.*got shape \[5, 1\]"),
    ("h-zero", dict(h=0.0), ValueError, r"`h` to be a positive finite float.*got 0.0"),
    ("h-negative", dict(h=-1e-3), ValueError, r"`h`.*positive"),
    ("h-nan", dict(h=float("nan")), ValueError, r"`h`.*finite"),
    ("n-vectors-zero", dict(n_vectors=0), ValueError, r"`n_vectors` to be an integer >= 1.*got 0"),
    ("n-vectors-float", dict(n_vectors=2.5), ValueError, r"`n_vectors`"),
    ("seed-negative", dict(seed=-1), ValueError, r"`seed`"),
    ("indices-shape", dict(indices=torch.arange(3)), ValueError, r"`indices`.*shape \[5\]"),
    ("indices-float", dict(indices=torch.zeros(5)), ValueError, r"`indices`.*integer"),
    ("chunk-zero", dict(chunk_size=0), ValueError, r"`chunk_size`"),
]


def rewrite_journal(journal, **arrays):
    """Rewrite a pending commit's ``parts.npz`` with some arrays replaced (None: left out), as damage would."""
    import numpy as np

    with np.load(journal / "parts.npz") as z:
        parts = {key: z[key] for key in z.files}
    for key, array in arrays.items():
        if array is None:
            parts.pop(key, None)
        else:
            parts[key] = array
    with open(journal / "parts.npz", "wb") as f:
        np.savez(f, **parts)
