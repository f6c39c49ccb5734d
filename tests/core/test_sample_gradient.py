"""The input-gradient norm ||grad_x l(x)||_2 (the sample gradient whose epoch sum is CSG, Ravikumar et al., ICLR 2026)
that the pass computes for free, the gradient pass (``n_vectors=0``) and the forward-only pass, against independent
computations: a per-sample loop through ``torch.func``."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvature_callback.core.estimator import curvature_details, forward_details


def small_net(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5)).to(dtype)
    net.train()  # scored in eval mode all the same (BatchNorm's running statistics, no dropout)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def reference_norms(net, x, y, loss_fn):
    """One sample at a time, through torch.func.grad of that sample's own loss, in eval mode."""
    net.eval()
    try:
        def loss_of(xi, yi):
            return loss_fn(net(xi[None]), yi[None])[0]

        return torch.stack([torch.func.grad(loss_of)(xi, yi).norm() for xi, yi in zip(x, y)])
    finally:
        net.train()


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("n_vectors", [0, 3])
def test_input_gradient_norm_equals_a_per_sample_reference(dtype, rtol, n_vectors):
    # float32: the batch and the one-sample forward round differently (other BLAS blocking); a norm of a gradient
    # through 4 layers moves by a few hundred ulp at most, far below 1e-4
    net = small_net(dtype)
    x, y = torch.randn(7, 3, 6, 6, dtype=dtype), torch.randint(0, 5, (7,))
    loss_fn = functools.partial(F.cross_entropy, reduction="none")
    got = curvature_details(net, x, y, n_vectors=n_vectors, chunk_size=5)
    want = reference_norms(net, x, y, loss_fn)
    torch.testing.assert_close(got.input_grad, want, rtol=rtol, atol=0)
    assert got.input_grad.dtype == dtype and net.training  # the model left in train mode
    assert got.curvature.isnan().all() if n_vectors == 0 else torch.isfinite(got.curvature).all()
    assert got.per_vector.shape == (7, n_vectors)


def test_the_gradient_pass_and_the_curvature_pass_agree_on_what_both_compute():
    net = small_net(torch.float64)
    x, y = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randint(0, 5, (5,))
    grad_only, full = curvature_details(net, x, y, n_vectors=0), curvature_details(net, x, y, n_vectors=2)
    for a, b in ((grad_only.input_grad, full.input_grad), (grad_only.loss, full.loss),
                 (grad_only.outputs, full.outputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_the_forward_pass_computes_no_gradient_and_matches_the_others():
    net = small_net(torch.float32)
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))
    out = forward_details(net, x, y)
    assert not out.loss.requires_grad and out.loss.is_inference() and net.training
    ref = curvature_details(net, x, y, n_vectors=0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)  # float32, one forward each
    torch.testing.assert_close(out.outputs, ref.outputs, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Non-finite loss for 1 sample\(s\), dataset indices \[12\]"):
        forward_details(net, x.index_fill(0, torch.tensor([2]), float("nan")), y, indices=torch.arange(10, 16))


def test_n_vectors_zero_is_a_gradient_pass_only_in_the_details_not_in_input_curvature():
    from curvature_callback import input_curvature

    with pytest.raises(ValueError, match=r"`n_vectors` to be an integer >= 1.*got 0"):
        input_curvature(nn.Linear(3, 2), torch.randn(2, 3), torch.zeros(2, dtype=torch.long), n_vectors=0)
    with pytest.raises(ValueError, match=r"`n_vectors` to be an integer >= 0.*got -1"):
        curvature_details(nn.Linear(3, 2), torch.randn(2, 3), torch.zeros(2, dtype=torch.long), n_vectors=-1)
