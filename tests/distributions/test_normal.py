"""NormalFeatures: Normal(μ, σ).to_event(1) with its log-density as one contraction over the
features, against Pyro's elementwise log_prob (the oracle) over a grid of batch shapes."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pplvm.distributions.normal import NormalFeatures

D = 6


@pytest.mark.parametrize(
    "param_batch, value_batch",
    [
        ((), ()),
        ((5,), ()),
        ((2, 4), (2, 4)),
        ((3, 1, 1, 4), (5, 7, 1)),  # an HMM's layout: restarts, 1, 1, states against sequences, steps, 1
    ],
)
def test_log_prob_and_its_gradient_are_the_elementwise_ones(param_batch, value_batch):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(*param_batch, D, generator=g, dtype=torch.float64).requires_grad_()
    scale = (torch.rand(*param_batch, D, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    x = torch.randn(*value_batch, D, generator=g, dtype=torch.float64) * 2
    fast = NormalFeatures(dist.Normal(loc, scale), 1).log_prob(x)
    oracle = dist.Normal(loc, scale).to_event(1).log_prob(x)
    assert fast.shape == oracle.shape
    torch.testing.assert_close(fast, oracle, rtol=1e-12, atol=1e-12)  # float64: the same sums, reordered
    g_fast = torch.autograd.grad(fast.sum(), (loc, scale))
    g_oracle = torch.autograd.grad(oracle.sum(), (loc, scale))
    torch.testing.assert_close(g_fast, g_oracle, rtol=1e-10, atol=1e-10)


def test_float32_far_from_zero_keeps_the_residuals_precision():
    """Data and means near 1000 with unit scales: the expansion x² − 2xμ + μ² would lose the
    residual in float32 rounding (~1e-1 per term); centred first it agrees with the float64
    elementwise density to float32 rounding of terms of the residuals' size."""
    g = torch.Generator().manual_seed(1)
    loc = 1000 + torch.randn(4, D, generator=g, dtype=torch.float64)
    scale = torch.rand(4, D, generator=g, dtype=torch.float64) + 0.5
    x = 1000 + torch.randn(50, 1, D, generator=g, dtype=torch.float64) * 2
    oracle = dist.Normal(loc, scale).to_event(1).log_prob(x)
    fast = NormalFeatures(dist.Normal(loc.float(), scale.float()), 1).log_prob(x.float())
    torch.testing.assert_close(fast.double(), oracle, rtol=1e-5, atol=1e-3)


def test_it_is_the_same_distribution_otherwise():
    loc, scale = torch.randn(3, D), torch.rand(3, D) + 0.1
    d = NormalFeatures(dist.Normal(loc, scale), 1)
    assert (d.batch_shape, d.event_shape) == (torch.Size([3]), torch.Size([D]))
    wide = d.expand((2, 3))
    assert isinstance(wide, NormalFeatures) and wide.sample().shape == (2, 3, D)
    torch.testing.assert_close(
        wide.log_prob(torch.zeros(D)), dist.Normal(loc, scale).to_event(1).log_prob(torch.zeros(D)).expand(2, 3)
    )
