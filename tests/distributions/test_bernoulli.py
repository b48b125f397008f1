"""BernoulliFeatures: Bernoulli(p).to_event(1) with its log-density as one contraction over the
features, against Pyro's elementwise log_prob (the oracle) over a grid of batch shapes."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pplvm.distributions.bernoulli import BernoulliFeatures

D = 6


@pytest.mark.parametrize(
    "param_batch, value_batch",
    [
        ((), ()),
        ((5,), ()),
        ((2, 4), (2, 4)),
        ((3, 1, 1, 4), (5, 7, 1)),  # an HMM's layout: draws, 1, 1, states against sequences, steps, 1
    ],
)
@pytest.mark.parametrize("by", ["probs", "logits"])
def test_log_prob_and_its_gradient_are_the_elementwise_ones(param_batch, value_batch, by):
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(*param_batch, D, generator=g, dtype=torch.float64)
    raw[..., 0] = 1.0  # a probability at the boundary, clamped alike by both
    raw = (raw if by == "probs" else torch.randn(*param_batch, D, generator=g, dtype=torch.float64)).requires_grad_()
    x = (torch.rand(*value_batch, D, generator=g) < 0.5).double()
    fast = BernoulliFeatures(dist.Bernoulli(**{by: raw}), 1).log_prob(x)
    oracle = dist.Bernoulli(**{by: raw}).to_event(1).log_prob(x)
    assert fast.shape == oracle.shape
    torch.testing.assert_close(fast, oracle, rtol=1e-12, atol=1e-12)  # float64: the same sums, reordered
    (g_fast,) = torch.autograd.grad(fast.sum(), raw)
    (g_oracle,) = torch.autograd.grad(oracle.sum(), raw)
    torch.testing.assert_close(g_fast, g_oracle, rtol=1e-10, atol=1e-10)


def test_it_is_the_same_distribution_otherwise():
    probs = torch.rand(3, D)
    d = BernoulliFeatures(dist.Bernoulli(probs=probs), 1)
    assert (d.batch_shape, d.event_shape) == (torch.Size([3]), torch.Size([D]))
    wide = d.expand((2, 3))
    assert isinstance(wide, BernoulliFeatures) and wide.sample().shape == (2, 3, D)
    with pytest.raises(ValueError, match="support"):  # validation on: a value that is not 0/1
        BernoulliFeatures(dist.Bernoulli(probs=probs), 1, validate_args=True).log_prob(torch.full((D,), 0.5))
