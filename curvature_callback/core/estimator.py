"""Per-sample input-loss curvature by finite differences of input gradients (pure torch, no Lightning).

Garg, Ravikumar & Roy (ICML 2024) score a training sample ``(x, y)`` by how sharply the loss curves around it
in input space::

    curvature(x) = (1/n) * sum_k || grad_x l(x + h*v_k) - grad_x l(x) ||^2

with Rademacher vectors ``v_k`` (entries +1/-1, the shape of ``x``). For a smooth loss,
``curvature / h**2`` estimates ``trace(H^2) = ||H||_F^2`` of the input Hessian ``H``.

The gradient at ``x`` is computed once per sample and reused for all ``n`` vectors; the ``n`` perturbed copies
of every sample are stacked along the batch dimension and go through the model in chunks, so a batch costs
``(n + 1)`` forward+backward passes per sample. ``v_k`` is a counter-based function of
``(seed, sample index, k)``: a sample's score does not depend on batch size, composition, order or device, up to
rounding. In float64 that is exact to ~1e-12; in float32 another batch shape rounds the gradients differently
(another BLAS blocking), and the squared difference of two nearly equal gradients amplifies it: relative changes
up to about ``32 u |g| / |g(x + h v) - g(x)|`` (u = 2**-24; ~1e-2 at h = 1e-3 on small models,
tests/core/test_estimator.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvature_callback.core.settings import check_int, check_settings

__all__ = ["CurvatureResult", "ForwardResult", "curvature_details", "default_chunk_size", "forward_details",
           "input_curvature", "rademacher"]

LossFn = Callable[[Tensor, Tensor], Tensor]

_MASK32 = 0xFFFFFFFF


def cross_entropy_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    """The default loss: cross-entropy with the given label, one value per sample."""
    return F.cross_entropy(outputs, targets, reduction="none")


def default_chunk_size(device: torch.device, sample_bytes: int = 3 * 32 * 32 * 4) -> int:
    """Rows (sample x vector pairs) per stacked forward+backward, by device and the size of one input.

    - CPU: at most 64 rows. Measured on the small CIFAR CNN (``benchmarks/bench_estimator.py --sweep-chunk``):
      buffers past glibc's adaptive mmap/trim thresholds (about 16 MB of activations at 128 rows, always at 256
      and more) cost tens of thousands of page faults per call; 64 rows ran 1.9-2.1x the published loop where 128
      ran 1.5-1.8x. Inputs above 12 KB per row get proportionally fewer rows.
    - GPU: up to 1024 rows (a CIFAR batch of 128 with n = 10 in about one pass), and at most 64 MB of inputs per
      chunk, so ImageNet-size inputs (602 KB) take about 111 rows and their activations stay within ordinary GPUs.

    Example:
        >>> default_chunk_size(torch.device("cpu")), default_chunk_size(torch.device("cpu"), 3 * 224 * 224 * 4)
        (64, 1)
        >>> default_chunk_size(torch.device("cuda")), default_chunk_size(torch.device("cuda"), 3 * 224 * 224 * 4)
        (1024, 111)
    """
    if torch.device(device).type == "cpu":
        return max(1, min(64, (64 * 12288) // max(1, sample_bytes)))
    return max(1, min(1024, (64 << 20) // max(1, sample_bytes)))


class CurvatureResult(NamedTuple):
    """What one scoring pass over a batch yields."""

    curvature: Tensor  #: ``[B]`` the score of docs/DESIGN.md §1 (NaN for a gradient pass, ``n_vectors=0``)
    loss: Tensor  #: ``[B]`` per-sample loss at ``x`` (no perturbation)
    outputs: Tensor  #: ``[B, ...]`` model outputs at ``x`` (logits), detached
    per_vector: Tensor  #: ``[B, n]`` each vector's ``||grad(x + h v_k) - grad(x)||^2`` (curvature is the row mean)
    #: ``[B]`` ``||grad_x l(x)||_2``, the input-gradient norm at ``x`` (the sample gradient of Ravikumar et al., ICLR
    #: 2026, whose epoch sum is CSG): the gradient every finite difference starts from, so free
    input_grad: Tensor


class ForwardResult(NamedTuple):
    """What a forward-only pass over a batch yields (no gradient, no curvature)."""

    loss: Tensor  #: ``[B]`` per-sample loss at ``x``
    outputs: Tensor  #: ``[B, ...]`` model outputs at ``x`` (logits)


# --------------------------------------------------------------------------------------------- the draw
def _mix32(x: Tensor) -> Tensor:
    """lowbias32 (C. Wellons): a 32-bit bijective integer hash, on int64 tensors holding 32-bit values.

    The products may wrap around int64; only their low 32 bits are kept, which wrapping leaves exact.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    return int(_mix32(torch.tensor([x & _MASK32], dtype=torch.int64))[0])


def rademacher(
    seed: int, indices: Tensor, ks: Tensor, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Rademacher vectors as a counter-based function of ``(seed, indices[r], ks[r])``.

    Every entry is a pure function of the seed, the sample index, the vector number and the entry's
    position: no generator state, no per-sample Python loop, the same on every device.

    Args:
        seed: non-negative integer seed.
        indices: ``[R]`` integer sample indices (on the device the vectors should be made on).
        ks: ``[R]`` vector numbers ``k``.
        shape: the shape of one sample.
        dtype: floating dtype of the result.

    Returns:
        ``[R, *shape]`` tensor of +1/-1.

    Example:
        >>> v = rademacher(0, torch.tensor([3, 3, 4]), torch.tensor([0, 1, 0]), (2, 5))
        >>> v.shape, bool(v.abs().eq(1).all())
        (torch.Size([3, 2, 5]), True)
        >>> torch.equal(v[0], rademacher(0, torch.tensor([3]), torch.tensor([0]), (2, 5))[0])
        True
    """
    device = indices.device
    size = math.prod(shape)
    words = -(-size // 32)
    s = _mix32_int(seed ^ _mix32_int(seed >> 32))
    idx = indices.to(torch.int64)
    key = _mix32((idx & _MASK32) ^ s)
    key = _mix32(key ^ ((idx >> 32) & _MASK32) ^ 0x68E31DA4)
    key = _mix32(key ^ ((ks.to(torch.int64) * 0x9E3779B9) & _MASK32))
    word_keys = _mix32(torch.arange(words, device=device, dtype=torch.int64) ^ 0x1B873593)
    bits = _mix32(key[:, None] ^ word_keys[None, :])  # [R, words], 32 random bits each
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    signs = (bits[:, :, None] >> shifts) & 1  # [R, words, 32]
    signs = signs.reshape(len(idx), words * 32)[:, :size]
    return (signs.to(dtype) * 2 - 1).reshape(len(idx), *shape)


# ------------------------------------------------------------------------------------ state we restore
@contextlib.contextmanager
def _model_state_kept(model: nn.Module) -> Iterator[None]:
    """eval() for the pass; every submodule's own mode restored after (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _float32_arithmetic(device: torch.device, fast: bool) -> Iterator[None]:
    """Autocast off, and TF32 off (``fast``: on, for matmuls and convolutions alike, whatever the user's flags)
    for the finite differences; flags restored after."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type="cpu", enabled=False))
        if device.type == "cuda":
            stack.enter_context(torch.autocast(device_type="cuda", enabled=False))
        stack.enter_context(_tf32(fast))
        yield


def default_channels_last(device: torch.device) -> bool:
    """Whether ``fast=True`` feeds image batches ``[B, C, H, W]`` in channels_last on ``device`` (unless the call's
    ``channels_last=`` says otherwise).

    On CUDA, cuDNN's TF32 tensor-core convolutions run in NHWC, and a channels_last input makes the whole network
    run so (weights are converted per call; the model itself is not touched). On the CPU it depends on the model
    (measured: a small CNN 1.41x faster, the CIFAR ResNet18 and a one-channel input within +-6 %;
    docs/PERFORMANCE.md): not applied there. The benchmarks pass ``channels_last=`` to time both layouts.
    """
    return device.type == "cuda"


def _fast_layout(x: Tensor, fast: bool, channels_last: bool | None) -> torch.memory_format | None:
    """The memory format the pass's inputs are fed in; ``None``: as they come."""
    wanted = fast and default_channels_last(x.device) if channels_last is None else channels_last
    return torch.channels_last if wanted and x.dim() == 4 else None


def _laid_out(x: Tensor, layout: torch.memory_format | None) -> Tensor:
    return x if layout is None else x.contiguous(memory_format=layout)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        # torch >= 2.9: the new API; mixing it with the legacy flags raises, and it reads back whatever the
        # user set with either API.
        saved = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved
    else:  # pragma: no cover - torch < 2.9
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """A model whose eval() forward still draws random numbers must not move the caller's RNG."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


# ---------------------------------------------------------------------------------------------- checks
def _check_arguments(
    inputs: object, targets: object, h: object, n_vectors: object, seed: object, min_vectors: int = 1
) -> tuple[float, int, int]:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"Expected `inputs` to be a torch.Tensor of shape [B, ...], got {type(inputs).__name__}.")
    if not inputs.is_floating_point():
        raise TypeError(
            f"Expected `inputs` to be a floating tensor, got dtype {inputs.dtype}. Curvature is taken with "
            "respect to continuous inputs; for token ids, score the embeddings instead: pass "
            "`embedding(ids)` as inputs and a model that starts after the embedding layer."
        )
    if inputs.dim() < 1:
        raise ValueError("Expected `inputs` with a batch dimension, shape [B, ...], got a 0-d tensor.")
    if not isinstance(targets, Tensor):
        raise TypeError(f"Expected `targets` to be a torch.Tensor with B={len(inputs)} rows, got {type(targets)}.")
    if len(targets) != len(inputs):
        raise ValueError(
            f"Expected one target per input: inputs have B={len(inputs)} rows, targets {len(targets)}."
        )
    return check_settings(h, n_vectors, seed, min_vectors=min_vectors)


def _check_indices(indices: Tensor | None, batch: int, device: torch.device) -> Tensor:
    if indices is None:
        return torch.arange(batch, device=device)
    indices = torch.as_tensor(indices, device=device)
    if indices.shape != (batch,) or indices.is_floating_point() or indices.is_complex():
        raise ValueError(
            f"Expected `indices` to be an integer tensor of shape [{batch}] (one dataset index per sample), got "
            f"dtype {indices.dtype} and shape {list(indices.shape)}."
        )
    if batch and int(indices.min()) < 0:
        raise ValueError("Expected non-negative `indices` (dataset positions), got a negative one.")
    return indices


def _per_sample(loss: object, rows: int) -> Tensor:
    if not isinstance(loss, Tensor) or loss.shape != (rows,):
        got = f"shape {list(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"Expected `loss_fn(outputs, targets)` to return per-sample losses of shape [{rows}], got {got}. "
            "A mean- or sum-reduced loss mixes samples: use reduction='none', e.g. "
            "`functools.partial(F.cross_entropy, reduction='none')` (it pickles, and resumes by its arguments)."
        )
    return loss


def _shown(where: list[int]) -> str:
    return ", ".join(map(str, where[:20])) + (" ..." if len(where) > 20 else "")


def _check_finite(values: Tensor, indices: Tensor, what: str) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        where = indices[bad].tolist()
        raise ValueError(
            f"Non-finite {what} for {len(where)} sample(s), dataset indices [{_shown(where)}]. Check those inputs "
            "and labels, or the model (diverged training, a label outside the output range?)."
        )


def _parameter_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (``None``: it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _forward(model: nn.Module, x: Tensor, inputs_dtype: torch.dtype) -> Tensor:
    """``model(x)``; a failure that a dtype mismatch explains is reported as one, with the fix.

    Checked after the fact rather than up front: a model that casts its input itself works with any dtype.
    """
    try:
        return model(x)
    except RuntimeError as e:
        wanted = _parameter_dtype(model)
        if wanted is None or wanted == x.dtype:
            raise
        if wanted == inputs_dtype:  # a float16/bfloat16 model: the pass itself raised the inputs to float32
            raise TypeError(
                f"Expected a model in float32 or float64, got parameters in {wanted}: the finite differences run "
                f"in {x.dtype} at least (in {wanted} a step h ~ 1e-3 is lost in rounding), and the model's forward "
                f"failed on {x.dtype} inputs ({e}). Score a float32 copy of the model (`model.float()`)."
            ) from e
        raise TypeError(
            f"Expected `inputs` in the model's parameter dtype {wanted}, got {inputs_dtype} (scored as {x.dtype}), "
            f"and the model's forward failed ({e}). Cast the dataset's inputs to {wanted} (in the dataset, or in "
            f"`batch_to_inputs`), or the model to {x.dtype} (`model.to({x.dtype})`"
            f"{', i.e. `model.double()`' if x.dtype == torch.float64 else ''})."
        ) from e


def _input_gradient(loss: Tensor, x: Tensor, indices: Tensor) -> Tensor:
    """Per-sample input gradients of per-sample losses; a loss that does not reach ``x`` is refused by name."""
    grad = torch.autograd.grad(loss.sum(), x, allow_unused=True)[0] if loss.requires_grad else None
    if grad is None:
        if len(x) == 0:
            return torch.zeros_like(x)
        raise ValueError(
            f"The loss of samples with dataset indices [{_shown(indices.tolist())}] has no gradient path to the "
            "inputs: `loss_fn(model(x), y)` does not depend on x through autograd, so it has no input curvature. "
            "Make the model's forward differentiable in x: no `x.detach()`, `torch.no_grad()`, `.item()`, "
            "`.numpy()` or integer casts of x, and an output computed from x (a frozen model is fine: its "
            "parameters need no gradients, only the path from x to the loss)."
        )
    return grad


# ---------------------------------------------------------------------------------------------- public
def curvature_details(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn | None = None,
    h: float = 1e-3,
    n_vectors: int = 10,
    seed: int = 0,
    indices: Tensor | None = None,
    chunk_size: int | None = None,
    fast: bool = False,
    channels_last: bool | None = None,
) -> CurvatureResult:
    """:func:`input_curvature`, together with the per-sample loss, the outputs and the input-gradient norm at the
    unperturbed input.

    Baselines (loss, margin, confidence) come from the forward at ``x`` that the score needs anyway, and the
    input-gradient norm from the backward at ``x``. Arguments as in :func:`input_curvature`, except that
    ``n_vectors=0`` is a gradient pass: one forward and backward per sample, no finite difference, the curvature
    NaN. Returns a :class:`CurvatureResult`.

    Example:
        For ``l(x) = 0.5 ||x||^2`` the input gradient is ``x`` itself:

        >>> half_square = lambda out, y: 0.5 * out.pow(2).sum(-1)
        >>> x = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
        >>> r = curvature_details(nn.Identity(), x, torch.zeros(2), loss_fn=half_square, n_vectors=0)
        >>> r.input_grad.tolist(), bool(r.curvature.isnan().all())
        ([5.0, 1.0], True)
    """
    h, n_vectors, seed = _check_arguments(inputs, targets, h, n_vectors, seed, min_vectors=0)
    loss_fn = cross_entropy_per_sample if loss_fn is None else loss_fn
    device, batch = inputs.device, inputs.shape[0]
    dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32  # never below float32
    indices = _check_indices(indices, batch, device)
    if chunk_size is None:
        row_bytes = (inputs[0].nelement() if batch else 1) * (8 if dtype == torch.float64 else 4)
        chunk_size = default_chunk_size(device, row_bytes)
    chunk_size = check_int("chunk_size", chunk_size, 1, hint=" (rows per pass)")

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))  # Lightning's loops may run under inference_mode
        stack.enter_context(torch.enable_grad())
        stack.enter_context(_model_state_kept(model))
        stack.enter_context(_rng_kept(device))
        stack.enter_context(_float32_arithmetic(device, fast))
        x = inputs.detach().to(dtype).clone()  # clone: a normal tensor, even from an inference tensor
        y = targets.detach().clone()
        layout = _fast_layout(x, fast, channels_last)
        x = _laid_out(x, layout)

        x.requires_grad_(True)
        outputs = _forward(model, x, inputs.dtype)
        loss = _per_sample(loss_fn(outputs, y), batch)
        _check_finite(loss.detach(), indices, "loss")
        g0 = _input_gradient(loss, x, indices)  # sum of per-sample losses: per-sample gradients
        grad_norm = g0.flatten(1).norm(dim=1) if batch else torch.empty(0, dtype=dtype, device=device)
        _check_finite(grad_norm, indices, "input gradient")
        x = x.detach()

        rows = batch * n_vectors
        squares = torch.empty(rows, dtype=dtype, device=device)
        for start in range(0, rows, chunk_size):
            r = torch.arange(start, min(start + chunk_size, rows), device=device)
            i, k = r // n_vectors, r % n_vectors
            v = rademacher(seed, indices[i], k, tuple(x.shape[1:]), dtype=dtype)
            xp = _laid_out(x[i] + h * v, layout).requires_grad_(True)
            lp = _per_sample(loss_fn(model(xp), y[i]), len(r))
            gp = _input_gradient(lp, xp, indices[i])
            squares[start : start + len(r)] = (gp - g0[i]).flatten(1).pow(2).sum(1)
        if n_vectors:
            curvature = squares.view(batch, n_vectors).mean(1)
            _check_finite(curvature, indices, "curvature")
        else:  # a gradient pass: no finite difference
            curvature = torch.full((batch,), math.nan, dtype=dtype, device=device)
    return CurvatureResult(curvature.detach(), loss.detach().to(dtype), outputs.detach(),
                           squares.view(batch, n_vectors).detach(), grad_norm.detach())


def forward_details(model: nn.Module, inputs: Tensor, targets: Tensor, *, loss_fn: LossFn | None = None,
                    indices: Tensor | None = None) -> ForwardResult:
    """The per-sample loss and the outputs at ``x``, with no backward at all: the forward-only pass.

    As the other passes: ``eval()`` mode, autocast off, the inputs in float32 at least, the model left as found;
    under ``torch.inference_mode`` (nothing is kept for a backward, so batches may be as large as the training
    loader's or larger). ``indices`` only name samples in messages.

    Example:
        >>> out = forward_details(nn.Identity(), torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        >>> round(out.loss.item(), 4), out.outputs.tolist()
        (0.1269, [[2.0, 0.0]])
    """
    _check_arguments(inputs, targets, 1e-3, 1, 0)
    loss_fn = cross_entropy_per_sample if loss_fn is None else loss_fn
    device, batch = inputs.device, inputs.shape[0]
    dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    indices = _check_indices(indices, batch, device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_model_state_kept(model))
        stack.enter_context(_rng_kept(device))
        stack.enter_context(_float32_arithmetic(device, False))
        outputs = _forward(model, inputs.to(dtype), inputs.dtype)
        loss = _per_sample(loss_fn(outputs, targets), batch)
        _check_finite(loss, indices, "loss")
    return ForwardResult(loss.to(dtype), outputs)


def input_curvature(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn | None = None,
    h: float = 1e-3,
    n_vectors: int = 10,
    seed: int = 0,
    indices: Tensor | None = None,
    chunk_size: int | None = None,
    fast: bool = False,
    channels_last: bool | None = None,
) -> Tensor:
    """Per-sample curvature of the loss around each input (Garg et al., ICML 2024, docs/DESIGN.md §1).

    .. math:: \\mathrm{curv}(x) = \\frac{1}{n}\\sum_{k=1}^{n}
        \\lVert \\nabla_x l(x + h v_k) - \\nabla_x l(x) \\rVert^2,\\quad v_k \\in \\{-1, +1\\}^{\\dim x}

    The model is scored in ``eval()`` mode with float32 (or float64) arithmetic: autocast off and TF32 off
    unless ``fast=True`` (which turns it on). It is left as found: module modes, parameters, ``.grad``, the
    global RNG state and the TF32 flags.

    Args:
        model: maps ``inputs`` to outputs (logits for the default loss).
        inputs: ``[B, ...]`` floating inputs, as the model sees them (after normalization).
        targets: ``[B]`` targets (the given, possibly noisy, labels).
        loss_fn: ``loss_fn(outputs, targets) -> [B]`` per-sample losses. Default: cross-entropy,
            ``reduction="none"``.
        h: finite-difference step (paper: 1e-3).
        n_vectors: Rademacher vectors per sample (paper: 10).
        seed: seed of the vectors.
        indices: ``[B]`` dataset index of each sample (default ``arange(B)``): ``v_k`` of a sample is a function
            of ``(seed, index, k)`` alone.
        chunk_size: rows (sample, vector pairs) per stacked forward+backward; default by device.
        fast: TF32 matmuls and convolutions (about 5 % error per value on Ampere and newer GPUs by the
            issue's measurement, rankings kept; not yet measured by this project), and on CUDA feed
            4-D image batches in channels_last (the layout of cuDNN's tensor-core convolutions). No effect on
            the CPU.
        channels_last: feed 4-D image batches in channels_last (True) or as they come (False); default: what
            ``fast`` does on the inputs' device (:func:`default_channels_last`). Scores agree to rounding.

    Returns:
        ``[B]`` scores on the inputs' device, in the inputs' floating dtype (float32 at least).

    Raises:
        TypeError: non-floating inputs (token ids: score an embedding instead), non-tensor arguments, or inputs
            in another floating dtype than the model's parameters.
        ValueError: ``h <= 0``, ``n_vectors < 1``, a loss that is not per-sample, a model whose output has no
            gradient path to its input, non-finite losses or scores (the messages name the sample indices).

    Example:
        For the quadratic loss ``0.5 x^T A x`` the gradient is ``A x`` and each vector contributes exactly
        ``h^2 ||A v||^2``; with ``A = 2 I`` that is ``4 h^2 dim(x)``:

        >>> A = 2 * torch.eye(3, dtype=torch.float64)
        >>> quad = lambda out, y: 0.5 * ((out @ A) * out).sum(-1)
        >>> x = torch.randn(2, 3, dtype=torch.float64)
        >>> s = input_curvature(nn.Identity(), x, torch.zeros(2), loss_fn=quad, h=0.1, n_vectors=4)
        >>> torch.allclose(s, torch.full((2,), 4 * 0.1**2 * 3, dtype=torch.float64))
        True
    """
    _check_arguments(inputs, targets, h, n_vectors, seed)  # at least one vector: a curvature needs one
    return curvature_details(
        model, inputs, targets, loss_fn=loss_fn, h=h, n_vectors=n_vectors, seed=seed, indices=indices,
        chunk_size=chunk_size, fast=fast, channels_last=channels_last,
    ).curvature
