"""input_curvature against exact references (docs/DESIGN.md §1-2)."""

import copy
import functools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import ERROR_CASES, X, Y, mlp
from torch import nn

from curvature_callback import input_curvature
from curvature_callback.core.estimator import (
    cross_entropy_per_sample,
    curvature_details,
    rademacher,
)
from curvature_callback.core.loss_identity import loss_identity
from curvature_callback.core.settings import check_float, check_int


def quadratic(a):
    def loss(out, _):
        return 0.5 * ((out @ a) * out).sum(-1)

    return loss


def symmetric(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("h", [1e-3, 0.1, 1.0])
def test_quadratic_is_exact_per_vector(h):
    """For 0.5 x^T A x the gradient difference is h A v: each vector contributes exactly h^2 ||A v||^2."""
    d, a = 7, symmetric(7)
    x = torch.randn(4, d, dtype=torch.float64)
    idx = torch.tensor([3, 10, 11, 500])
    got = input_curvature(nn.Identity(), x, torch.zeros(4), loss_fn=quadratic(a), h=h, n_vectors=3, seed=9, indices=idx)
    v = rademacher(9, idx.repeat_interleave(3), torch.arange(3).repeat(4), (d,), dtype=torch.float64)
    want = (h * v @ a).pow(2).sum(1).view(4, 3).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


def test_quadratic_mean_converges_to_frobenius():
    """E ||A v||^2 = ||A||_F^2 for Rademacher v: the mean over many vectors approaches h^2 ||A||_F^2."""
    a, h = symmetric(6, seed=1), 1e-3
    x = torch.randn(3, 6, dtype=torch.float64)
    got = input_curvature(nn.Identity(), x, torch.zeros(3), loss_fn=quadratic(a), h=h, n_vectors=4000, seed=1)
    want = h * h * a.pow(2).sum()
    assert ((got - want).abs() / want).max() < 0.05


def test_smooth_model_matches_hessian_frobenius():
    """On a smooth model curvature/h^2 -> ||Hessian_x||_F^2 (torch.func.hessian as the reference)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    got = input_curvature(model, x, y, h=1e-4, n_vectors=3000, seed=2) / 1e-8
    ref = torch.stack([
        torch.func.hessian(lambda z, i=i: F.cross_entropy(model(z[None]), y[i : i + 1]))(x[i]).pow(2).sum()
        for i in range(4)
    ])
    assert ((got - ref).abs() / ref).max() < 0.08


def test_finite_difference_converges_as_h_shrinks():
    """Per vector, ||g(x+hv)-g(x)||^2/h^2 -> ||Hv||^2 on a smooth model, with error O(h)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Softplus(), nn.Linear(8, 3)).double()
    x, y = torch.randn(1, 4, dtype=torch.float64), torch.tensor([1])
    hess = torch.func.hessian(lambda z: F.cross_entropy(model(z[None]), y))(x[0])
    v = rademacher(0, torch.tensor([0]), torch.tensor([0]), (4,), dtype=torch.float64)[0]
    exact = (hess @ v).pow(2).sum()
    errors = [abs(float(input_curvature(model, x, y, h=h, n_vectors=1)[0] / h**2 - exact.detach()))
              for h in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] / exact < 1e-2


# ------------------------------------------------------------------------------------------ invariance
def rounding_rtol(model, x, y, idx, n_vectors, seed, h=1e-3):
    """Per-sample relative tolerance for comparing scores of the same sample from different batch shapes.

    A gradient g computed in floating point carries rounding ~ gamma*u*|g| (u: unit roundoff), and another batch
    shape (BLAS blocking) rounds differently. The score squares d = g(x + h v) - g(x), |d| ~ h|Hv| << |g|: d moves
    by up to 2*gamma*u*|g|, the score by up to 2 * 2*gamma*u*|g|/|d| = 4*gamma*u*R relative, R = |g|/|d| (taken
    in float64, the largest over the vectors). gamma ~ 8 for the 6-16-4 mlp (sums of <= 16 terms, forward and
    back): 32*u*R. Here R ~ 2e3-6e3: ~1e-2 in float32, ~2e-11 in float64; seen 1.9*u*R at most (native, AVX2,
    default ATen kernels). A wrong vector or sample moves a score O(1).
    """
    u = torch.finfo(x.dtype).eps / 2
    m, xd = copy.deepcopy(model).double().eval(), x.double().requires_grad_(True)  # eval: as the estimator scores
    (g,) = torch.autograd.grad(F.cross_entropy(m(xd), y, reduction="sum"), xd)
    d2 = curvature_details(m, xd.detach(), y, n_vectors=n_vectors, seed=seed, indices=idx, h=h).per_vector
    return 32 * u * g.flatten(1).norm(dim=1) / d2.min(1).values.sqrt()


def assert_close_per_sample(got, want, rtol):
    bad = (got - want).abs() > rtol * want.abs()
    assert not bad.any(), f"relative errors {((got - want).abs() / want.abs())[bad].tolist()} > {rtol[bad].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_invariant_to_batch_size_composition_order_and_chunks(dtype):
    """Up to rounding (see rounding_rtol): ~1e-12 in float64; in float32 ~1e-4, which BLAS batch shapes move."""
    torch.manual_seed(4)
    model = mlp().to(dtype)
    x, y, idx = torch.randn(9, 6, dtype=dtype), torch.randint(0, 4, (9,)), torch.arange(100, 109)
    full = input_curvature(model, x, y, n_vectors=4, seed=3, indices=idx)
    rtol = rounding_rtol(model, x, y, idx, n_vectors=4, seed=3).to(dtype)
    perm = torch.tensor([8, 1, 4])
    part = input_curvature(model, x[perm], y[perm], n_vectors=4, seed=3, indices=idx[perm])
    assert_close_per_sample(part, full[perm], rtol[perm])
    pieces = torch.cat([input_curvature(model, x[s], y[s], n_vectors=4, seed=3, indices=idx[s])
                        for s in (slice(0, 2), slice(2, 7), slice(7, 9))])
    assert_close_per_sample(pieces, full, rtol)
    for chunk in (1, 5, 36, 1000):
        assert_close_per_sample(input_curvature(model, x, y, n_vectors=4, seed=3, indices=idx, chunk_size=chunk),
                                full, rtol)


def test_seed_and_index_change_the_vectors():
    torch.manual_seed(5)
    model = mlp()
    a = input_curvature(model, X, Y, n_vectors=3, seed=0)
    b = input_curvature(model, X, Y, n_vectors=3, seed=1)
    c = input_curvature(model, X, Y, n_vectors=3, seed=0, indices=torch.arange(5) + 7)
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)
    assert not torch.allclose(a, c, rtol=1e-3, atol=0)
    torch.testing.assert_close(a, input_curvature(model, X, Y, n_vectors=3, seed=0), rtol=0, atol=0)


def test_batchnorm_model_scored_in_eval_mode():
    """In eval mode BatchNorm uses running statistics: a sample's score does not depend on its batch."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).train()
    with torch.no_grad():
        model(torch.randn(64, 6) * 3)  # non-trivial running statistics
    model, x = model.double(), X.double()  # float64: batches of 5 and 1 round alike to ~1e-12 (rounding_rtol)
    full = input_curvature(model, x, Y, n_vectors=2)
    alone = input_curvature(model, x[2:3], Y[2:3], n_vectors=2, indices=torch.tensor([2]))
    assert_close_per_sample(alone, full[2:3], rounding_rtol(model, x, Y, torch.arange(5), n_vectors=2, seed=0)[2:3])
    assert model.training


# ------------------------------------------------------------------------------------------ the draw
def test_rademacher_entries_are_balanced_and_uncorrelated():
    v = rademacher(0, torch.arange(200).repeat_interleave(5), torch.arange(5).repeat(200), (3, 8, 8))
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    flat = v.flatten(1)
    assert abs(float(flat.mean())) < 0.01
    corr = flat @ flat.T / flat.shape[1]
    off = corr[~torch.eye(len(corr), dtype=torch.bool)]
    sd = 192**-0.5  # independent rows of 192 signs: correlations ~ N(0, 1/192)
    assert abs(float(off.std()) / sd - 1) < 0.05
    assert abs(float(off.mean())) < 0.01
    assert float(off.abs().max()) < 6.5 * sd
    bit_rate = (flat > 0).float().mean(0)  # every position is fair
    assert float((bit_rate - 0.5).abs().max()) < 0.12


def test_rademacher_is_a_function_of_seed_index_k_only():
    a = rademacher(7, torch.tensor([5, 6]), torch.tensor([2, 0]), (10,))
    b = rademacher(7, torch.tensor([6, 1, 5]), torch.tensor([0, 0, 2]), (10,))
    torch.testing.assert_close(a[0], b[2], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)
    big = rademacher(7, torch.tensor([2**40 + 5]), torch.tensor([2]), (10,))
    assert not torch.equal(big[0], a[0])  # the high bits of an index count


# ------------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize(("dtype", "expected"), [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                                 (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
def test_result_dtype_never_below_float32(dtype, expected):
    model = mlp().to(expected)
    out = input_curvature(model, X.to(dtype), Y, n_vectors=2)
    assert out.dtype == expected and out.shape == (5,) and out.device == X.device


def test_details_return_loss_and_outputs_at_x():
    model = mlp()
    res = curvature_details(model, X, Y, n_vectors=2)
    with torch.no_grad():
        logits = model(X)
    torch.testing.assert_close(res.outputs, logits)
    torch.testing.assert_close(res.loss, F.cross_entropy(logits, Y, reduction="none"))


def test_empty_batch():
    assert input_curvature(mlp(), X[:0], Y[:0]).shape == (0,)


# ------------------------------------------------------------------------------------------ state
def test_model_and_global_state_left_as_found():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 4)).train()
    model[2].eval()  # a frozen BatchNorm inside a training model: mixed modes must survive
    model[3].weight.grad = torch.ones_like(model[3].weight)
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    input_curvature(model, X, Y, n_vectors=3)
    assert [m.training for m in model] == [True, True, False, True]
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert model[0].weight.grad is None
    assert torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight))
    assert torch.equal(rng, torch.get_rng_state())


def test_tf32_flags_restored_legacy_api():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        input_curvature(mlp(), X, Y, n_vectors=1)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_tf32_off_inside_the_pass_and_restored():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cuda.matmul.fp32_precision)
            return x

    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        model = nn.Sequential(mlp(), Spy())
        input_curvature(model, X, Y, n_vectors=1)
        assert set(seen) == {"ieee"}
        seen.clear()
        input_curvature(model, X, Y, n_vectors=1, fast=True)
        assert set(seen) == {"tf32"}
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        # fast turns TF32 on whatever the user's flags say (PyTorch's default leaves matmuls in IEEE)
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        seen.clear()
        input_curvature(model, X, Y, n_vectors=1, fast=True)
        assert set(seen) == {"tf32"}
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def test_autocast_no_grad_and_inference_mode_do_not_change_scores():
    model = mlp()
    want = input_curvature(model, X, Y, n_vectors=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(input_curvature(model, X, Y, n_vectors=2), want, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(input_curvature(model, X, Y, n_vectors=2), want, rtol=0, atol=0)
    with torch.inference_mode():
        xi, yi = X.clone(), Y.clone()  # inference tensors, as Lightning's predict loop would hand over
        got = input_curvature(model, xi, yi, n_vectors=2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("kwargs", "error", "match"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_say_what_was_expected(kwargs, error, match):
    args = {"model": mlp(), "inputs": X, "targets": Y, **kwargs}
    model, inputs, targets = args.pop("model"), args.pop("inputs"), args.pop("targets")
    with pytest.raises(error, match=match):
        input_curvature(model, inputs, targets, **args)


def test_non_finite_loss_names_the_samples():
    x = X.clone()
    x[3] = float("nan")
    with pytest.raises(ValueError, match=r"Non-finite loss for 1 sample\(s\), dataset indices \[13\]"):
        input_curvature(mlp(), x, Y, indices=torch.arange(10, 15))


def test_non_finite_curvature_names_the_samples():
    class Blowup(nn.Module):  # finite at x, infinite gradient off x for sample 1
        def forward(self, x):
            scale = torch.ones(len(x), 1)
            off = (x - x.detach().round(decimals=2)).abs().sum(1, keepdim=True) > 1e-6
            scale = torch.where(off & (x[:, :1] > 100), torch.full_like(scale, float("inf")), scale)
            return x[:, :4] * scale

    x = X.clone()
    x[1, 0] = 1000.0
    x = x.round(decimals=2)
    with pytest.raises(ValueError, match=r"Non-finite curvature.*\[1\]"):
        input_curvature(Blowup(), x, Y, n_vectors=1)


def test_per_vector_scores_are_the_single_vector_scores():
    """Vector k of a sample is the same with n_vectors=1 at k=0 only; the row mean is the curvature."""
    model = mlp().double()
    x = X.double()
    res = curvature_details(model, x, Y, n_vectors=4, seed=2)
    torch.testing.assert_close(res.per_vector.mean(1), res.curvature)
    torch.testing.assert_close(res.per_vector[:, :1], curvature_details(model, x, Y, n_vectors=1, seed=2).per_vector)


def test_fast_feeds_images_in_channels_last_where_it_pays_and_scores_the_same(monkeypatch):
    """On CUDA ``fast=True`` feeds [B, C, H, W] batches in channels_last; here the CPU stands in for it."""

    layouts = []

    class Spy(nn.Module):
        def forward(self, x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return x

    torch.manual_seed(0)
    net = nn.Sequential(Spy(), nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    want = input_curvature(net, x, y, n_vectors=3, h=1e-2, fast=True)  # CPU: fast changes nothing
    assert layouts and not any(layouts)
    layouts.clear()
    got = input_curvature(net, x, y, n_vectors=3, h=1e-2, fast=True, chunk_size=4, channels_last=True)
    assert layouts and all(layouts)  # the input and every chunk of perturbed copies
    # other conv kernels (oneDNN NHWC) and chunks round differently: 32*u*R = 4e-4-6e-4 (rounding_rtol; R = |g|/|d|
    # = 230-320 at h=1e-2), seen <= 1e-5 with oneDNN's AVX-512 and AVX2 kernels
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    layouts.clear()
    input_curvature(net, x, y, n_vectors=3, h=1e-2)  # not fast: fed as the inputs come
    assert layouts and not any(layouts)
    flat = nn.Sequential(Spy(), nn.Linear(6, 3))
    input_curvature(flat, torch.randn(5, 6), y, n_vectors=2, fast=True)  # not an image batch: as it comes
    assert not any(layouts)


def test_numpy_scalars_are_settings_like_python_numbers():
    model = mlp()
    want = input_curvature(model, X, Y, h=1e-3, n_vectors=2, seed=3, chunk_size=4)
    got = input_curvature(model, X, Y, h=np.float32(1e-3), n_vectors=np.int64(2), seed=np.uint64(3),
                          chunk_size=np.int32(4))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert check_float("h", np.float32(1e-3)) == 1e-3  # the decimal written, not float32's 0.0010000000474...
    assert check_int("n", np.int64(2), 1) == 2 and type(check_int("n", np.int64(2), 1)) is int
    for call, match in [(lambda: check_int("n", np.bool_(True), 1), r"`n` to be an integer >= 1, got np.True_"),
                        (lambda: check_int("n", 5, 0, 5), r"`n` to be an integer in \[0, 5\), got 5"),
                        (lambda: check_float("f", np.float64("inf")), r"`f` to be a positive finite float"),
                        (lambda: check_float("f", 2.0, at_most=1.0), r"`f` to be a float in \(0, 1\], got 2.0")]:
        with pytest.raises(ValueError, match=match):
            call()


def test_inputs_in_another_dtype_than_the_model_say_how_to_fix():
    with pytest.raises(TypeError, match=r"parameter dtype torch.float32, got torch.float64 \(scored as "
                                        r"torch.float64\).*forward failed \(.*dtype.*\).*model.double\(\)") as info:
        input_curvature(mlp(), X.double(), Y)
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's own error stays attached
    with pytest.raises(TypeError, match=r"model in float32 or float64, got parameters in torch.float16.*"
                                        r"`model.float\(\)`"):
        input_curvature(mlp().half(), X.half(), Y)

    class CastsItself(nn.Module):  # casts its input: any dtype works, nothing to refuse
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x.float())

    assert input_curvature(CastsItself(), X.double(), Y, n_vectors=1).dtype == torch.float64


class DetachesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x.detach())


class IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return self.bias.expand(len(x), 4)


@pytest.mark.parametrize("model", [DetachesInput, IgnoresInput, lambda: DetachesInput().requires_grad_(False)],
                         ids=["detaches", "ignores-x", "detaches-frozen"])
def test_model_without_a_gradient_path_to_its_input(model):
    with pytest.raises(ValueError, match=r"samples with dataset indices \[10, 11, 12, 13, 14\] has no gradient path "
                                         r"to the inputs.*`x.detach\(\)`.*frozen model is fine"):
        input_curvature(model(), X, Y, n_vectors=1, indices=torch.arange(10, 15))


def test_frozen_model_still_scores():
    """Parameters without gradients are fine: the path from x to the loss is what counts."""
    model = mlp()
    want = input_curvature(model, X, Y, n_vectors=2)
    torch.testing.assert_close(input_curvature(model.requires_grad_(False), X, Y, n_vectors=2), want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ loss identity
def weighted(outputs, targets, weight):
    return F.cross_entropy(outputs, targets, weight=weight, reduction="none")


def test_loss_identity_names_the_loss_with_its_arguments():
    assert loss_identity(None) == loss_identity(cross_entropy_per_sample) == "cross_entropy"
    assert loss_identity(F.cross_entropy) == "torch.nn.functional.cross_entropy"
    assert loss_identity(functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3)) == (
        "functools.partial(torch.nn.functional.cross_entropy, label_smoothing=0.3, reduction='none')")
    assert loss_identity(nn.CrossEntropyLoss(label_smoothing=0.3)) == (
        "torch.nn.modules.loss.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.3, reduction='mean', "
        "weight=None)")
    # keyword order, a nested partial, numpy numbers: the same loss, the same string
    a = functools.partial(F.cross_entropy, label_smoothing=0.3, reduction="none")
    b = functools.partial(functools.partial(F.cross_entropy, reduction="none"), label_smoothing=np.float64(0.3))
    assert loss_identity(a) == loss_identity(b) == loss_identity(
        functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3))
    assert loss_identity(a) != loss_identity(functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.0))
    # tensors by digest of their values, dtype and shape
    w = torch.tensor([1.0, 2.0, 3.0])
    ident = loss_identity(functools.partial(weighted, weight=w))
    assert re.fullmatch(r"functools.partial\(test_estimator.weighted, weight=tensor\(sha1=[0-9a-f]{40}, "
                        r"dtype=torch.float32, shape=\(3,\)\)\)", ident)
    assert loss_identity(functools.partial(weighted, weight=w.clone())) == ident
    for other in (torch.tensor([1.0, 2.0, 4.0]), w.double(), w[None]):
        assert loss_identity(functools.partial(weighted, weight=other)) != ident
    assert loss_identity(nn.CrossEntropyLoss(weight=w)) != loss_identity(nn.CrossEntropyLoss(weight=w * 2))
    assert loss_identity(functools.partial(weighted, weight=w.numpy())).startswith(
        "functools.partial(test_estimator.weighted, weight=tensor(sha1=")


class Scaled:
    """A callable object: known by its class and attributes when they render."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, outputs, targets):
        return self.scale * F.cross_entropy(outputs, targets, reduction="none")


def test_loss_identity_unknown_where_values_could_change_unseen():
    scale = 2.0

    def closure(outputs, targets):
        return scale * F.cross_entropy(outputs, targets, reduction="none")

    assert loss_identity(Scaled(2.0)) == "test_estimator.Scaled(scale=2.0)"
    for unknown in (lambda o, t: F.cross_entropy(o, t, reduction="none"), closure,
                    functools.partial(closure, scale=3.0),  # a partial of a closure
                    Scaled(object()),  # an attribute without a deterministic rendering
                    Scaled(2.0).__call__,  # a bound method: its object's whole state decides
                    functools.partial(F.cross_entropy, reduction="none", weight={1: torch.ones(3)})):
        assert loss_identity(unknown) is None
