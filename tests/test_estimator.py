"""input_curvature against exact references (DESIGN §1-2)."""

import pytest
import torch
import torch.nn.functional as F
from cases import ERROR_CASES, X, Y, mlp
from torch import nn

from curvature_callback import input_curvature
from curvature_callback.estimator import curvature_details, rademacher


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
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_invariant_to_batch_size_composition_order_and_chunks(dtype, rtol):
    """Exact in float64; in float32 the finite difference carries ~1e-4 rounding that BLAS batch shapes move."""
    torch.manual_seed(4)
    model = mlp().to(dtype)
    x, y, idx = torch.randn(9, 6, dtype=dtype), torch.randint(0, 4, (9,)), torch.arange(100, 109)
    full = input_curvature(model, x, y, n_vectors=4, seed=3, indices=idx)
    perm = torch.tensor([8, 1, 4])
    part = input_curvature(model, x[perm], y[perm], n_vectors=4, seed=3, indices=idx[perm])
    torch.testing.assert_close(part, full[perm], rtol=rtol, atol=0)
    pieces = torch.cat([input_curvature(model, x[s], y[s], n_vectors=4, seed=3, indices=idx[s])
                        for s in (slice(0, 2), slice(2, 7), slice(7, 9))])
    torch.testing.assert_close(pieces, full, rtol=rtol, atol=0)
    for chunk in (1, 5, 36, 1000):
        torch.testing.assert_close(input_curvature(model, x, y, n_vectors=4, seed=3, indices=idx, chunk_size=chunk),
                                   full, rtol=rtol, atol=0)


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
    full = input_curvature(model, X, Y, n_vectors=2)
    alone = input_curvature(model, X[2:3], Y[2:3], n_vectors=2, indices=torch.tensor([2]))
    torch.testing.assert_close(alone, full[2:3], rtol=1e-3, atol=0)
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
    import curvature_callback.estimator as estimator

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
    monkeypatch.setattr(estimator, "_channels_last_pays", lambda device: True)
    got = input_curvature(net, x, y, n_vectors=3, h=1e-2, fast=True, chunk_size=4)
    assert layouts and all(layouts)  # the input and every chunk of perturbed copies
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    layouts.clear()
    input_curvature(net, x, y, n_vectors=3, h=1e-2)  # not fast: fed as the inputs come
    assert layouts and not any(layouts)
    flat = nn.Sequential(Spy(), nn.Linear(6, 3))
    input_curvature(flat, torch.randn(5, 6), y, n_vectors=2, fast=True)  # not an image batch: as it comes
    assert not any(layouts)
