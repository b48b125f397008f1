"""Importance-sampled log-likelihood against closed forms.

Oracles: the linear-Gaussian model's marginal (PPCA, ``x ~ N(b, WWᵀ + σ²I)``), its analytic
ELBO, and the exact GMM likelihood (assignments summed out). Proposals are wider than the
posterior, so the weights are bounded and the delta-method standard error is trustworthy.
Tolerance: |error| < 4.5 standard errors per datum (50 data: chance failure < 4e-4); the
estimator's downward bias (Jensen, ≈ se²/2 < 2e-4 nats here) is far below that.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearEncoder, analytic_elbo, make_model, sample_data

from pplvm.errors import CardError, DataError, IncompatibleError
from pplvm.families import FAMILIES
from pplvm.guides.amortized import AmortizedNormal
from pplvm.inference.importance import importance_log_likelihood

Z_MAX = 4.5


def setup(n=50, inflate=1.5, shift=0.3):
    model = make_model()
    x = sample_data(model, n)
    enc = LinearEncoder(model.dim, model.latent_dim, torch.float64)
    enc.set_posterior(model, inflate=inflate, shift=shift)
    return model, x, AmortizedNormal(model, enc)


def test_matches_the_closed_form_marginal_within_its_standard_error():
    model, x, guide = setup()
    est = importance_log_likelihood(model, guide, x, k=2000, seed=0)
    exact = model.log_likelihood(x)
    assert est.log_likelihood.shape == est.stderr.shape == est.bits_per_dim.shape == (50,)
    assert (est.stderr < 0.05).all()  # precise enough for the comparison to mean something
    assert ((est.log_likelihood - exact).abs() / est.stderr).max() < Z_MAX
    torch.testing.assert_close(est.bits_per_dim, -est.log_likelihood / (model.dim * math.log(2)))
    assert ((est.ess > 1) & (est.ess <= 2000)).all()


def test_exact_posterior_proposal_has_zero_variance_and_chunking_is_exact():
    """With q = p(z | x) every weight equals p(x): the estimate is log p(x) to float64 rounding
    for any chunking of data and particles (uneven chunks included), and se = 0, ess = k."""
    model, x, guide = setup(n=23, inflate=1.0, shift=0.0)
    exact = model.log_likelihood(x).detach()
    whole = importance_log_likelihood(model, guide, x, k=10, seed=0)
    chunked = importance_log_likelihood(model, guide, x, k=10, batch_size=7, max_elements=7 * 3 * model.dim, seed=1)
    for est in (whole, chunked):
        torch.testing.assert_close(est.log_likelihood, exact, rtol=0, atol=1e-10)
        assert est.stderr.max() < 1e-6
        torch.testing.assert_close(est.ess, torch.full_like(est.ess, 10.0))


def test_elbo_below_iwae_below_log_likelihood():
    """E[IWAE_1] = ELBO (analytic) < E[IWAE_10] < E[IWAE_100] < log p(x). One datum replicated
    R times: each row's estimate is one independent draw of the IWAE-k bound, so their mean
    estimates E[IWAE_k] with standard error sd/√R. Measured: ELBO -6.00, IWAE_10 -4.27,
    IWAE_100 -4.149, log p -4.141; every gap is > 3 standard errors, the tolerances 4.5."""
    model, x, guide = setup(n=1, inflate=1.5, shift=0.6)
    R = 4000
    xs = x.expand(R, -1)
    log_p = model.log_likelihood(x).item()
    elbo = analytic_elbo(model, x, *guide.encoder(x)).item()
    means, ses = {}, {}
    for k in (1, 10, 100):
        draws = importance_log_likelihood(model, guide, xs, k=k, seed=k).log_likelihood
        means[k], ses[k] = draws.mean().item(), draws.std().item() / math.sqrt(R)
    assert abs(means[1] - elbo) < Z_MAX * ses[1]
    assert elbo < means[10] - Z_MAX * ses[10]
    assert means[10] + Z_MAX * ses[10] < means[100] - Z_MAX * ses[100]
    assert means[100] < log_p + Z_MAX * ses[100]
    assert means[100] > log_p - 0.05  # and close to it


def test_k_and_batching_change_the_estimate_only_within_noise():
    model, x, guide = setup()
    a = importance_log_likelihood(model, guide, x, k=2000, seed=0)
    b = importance_log_likelihood(model, guide, x, k=500, batch_size=7, max_elements=7 * 40 * model.dim, seed=1)
    z = (a.log_likelihood - b.log_likelihood) / (a.stderr**2 + b.stderr**2).sqrt()
    assert z.abs().max() < Z_MAX
    assert (b.stderr > a.stderr).float().mean() > 0.9  # 4x fewer draws: se about 2x larger


def test_memory_bound_and_seed():
    """No pass builds more than max_elements (particles × rows × D) elements; the passes
    cover every datum k times; the same seed gives the same result, another seed another."""
    model, x, guide = setup(n=23)
    model.calls.clear()
    max_elements = 6 * 5 * model.dim
    a = importance_log_likelihood(model, guide, x, k=17, batch_size=100, max_elements=max_elements, seed=3)
    shapes = model.calls
    assert max(math.prod(s) for s in shapes) <= max_elements
    assert sum(s[0] * s[1] for s in shapes) == 17 * 23
    model.calls.clear()
    b = importance_log_likelihood(model, guide, x, k=17, batch_size=100, max_elements=max_elements, seed=3)
    c = importance_log_likelihood(model, guide, x, k=17, batch_size=100, max_elements=max_elements, seed=4)
    assert torch.equal(a.log_likelihood, b.log_likelihood)
    assert not torch.equal(a.log_likelihood, c.log_likelihood)


def test_gmm_with_a_uniform_assignment_proposal():
    """Generic over models: the pplvm GMM with its globals fixed and a guide proposing the
    discrete assignment uniformly; IS recovers its exact (enumerated) likelihood."""
    gmm = FAMILIES["gmm"](FAMILIES["gmm"].Config(components=3), 2)
    params = {
        "weights": torch.tensor([0.5, 0.3, 0.2]),
        "locs": torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]]),
        "scales": torch.tensor([[1.0, 1.0], [0.7, 0.7], [1.2, 0.5]]),
    }
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0)) * 2 + 1

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("assignment", dist.Categorical(torch.ones(3) / 3))

    est = importance_log_likelihood(gmm.conditioned(params), guide, x, k=3000, seed=0, max_plate_nesting=1)
    exact = gmm.log_likelihood(x, params)
    assert (est.stderr < 0.05).all()
    assert ((est.log_likelihood - exact.double()).abs() / est.stderr).max() < Z_MAX


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k = 0: expected an integer >= 1"),
        ({"k": 2.5}, "k = 2.5"),
        ({"batch_size": 0}, "batch_size = 0"),
        ({"max_elements": 0}, "max_elements = 0"),
        ({"max_elements": 3}, "max_elements = 3: one draw for one datum already needs 4 elements"),
    ],
)
def test_bad_arguments(kwargs, match):
    model, x, guide = setup(n=3)
    with pytest.raises(CardError, match=match):
        importance_log_likelihood(model, guide, x, **kwargs)
    with pytest.raises(DataError, match="empty"):
        importance_log_likelihood(model, guide, x[:0])


def test_refuses_global_latents_and_unproposed_latents():
    model, x, guide = setup(n=3)

    def with_global(x):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(w.unsqueeze(-1) * torch.ones_like(x), 1.0).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))

    with pytest.raises(IncompatibleError, match="site 'w' is outside the 'data' plate.*condition"):
        importance_log_likelihood(with_global, global_guide, x, k=4)

    def empty_guide(x):
        with pyro.plate("data", len(x)):
            pass

    with pytest.raises(IncompatibleError, match="model latent 'z' is not proposed by the guide"):
        importance_log_likelihood(model, empty_guide, x, k=4, max_plate_nesting=1)
