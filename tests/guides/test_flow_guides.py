"""Flow guides against oracles: an IAF guide starts as the Gaussian guide it extends, its
density normalises (a quadrature over the latent plane), and on a model whose posterior is a
strongly correlated Gaussian (closed-form evidence) the flow autoguide's ELBO approaches
log p(x) where the mean-field guide's cannot."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_median

import pplvm
from pplvm.guides import AmortizedFlow, AutoFlowNormal, make_guide

VAE = {
    "name": "v",
    "model": {"family": "vae", "latent_dim": 2, "hidden": [16]},
    "guide": {"kind": "flow"},
    "objective": {"name": "elbo"},
    "data": {"source": "digits", "binarize": "static"},
    "training": {"epochs": 1, "progress": False},
}


def test_iaf_guide_starts_as_the_gaussian_guide_and_normalises():
    run = pplvm.Run.from_card(VAE)
    guide = run.guide
    assert isinstance(guide, AmortizedFlow)
    x = run.dataset.train[:3]
    q = guide.local_posterior(x)
    loc, scale = guide.encoder(x)
    z = torch.randn(3, 2)
    gauss = dist.Normal(loc, scale).to_event(1)
    torch.testing.assert_close(q.log_prob(z), gauss.log_prob(z))  # identity start
    with torch.no_grad():  # leave the identity: random output layers
        g = torch.Generator().manual_seed(0)
        for f in guide.flows:
            for p in f.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    # ∫ q(z | x) dz by a 600 x 600 midpoint grid over ±(8 σ + 6) around the encoder's mean: 1 within 3e-3
    # (the IAF steps move and stretch q by a few units; quadrature error ~1e-4)
    m = 600
    with torch.no_grad():
        q = guide.local_posterior(x[:1])
        axes = [
            torch.linspace(float(loc[0, i] - 8 * scale[0, i] - 6), float(loc[0, i] + 8 * scale[0, i] + 6), m)
            for i in range(2)
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
        cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
        mass = float((q.log_prob(grid[:, None, :]).exp() * cell).sum())
    assert mass == pytest.approx(1.0, abs=3e-3)
    post = run.posterior(run.transform.inverse(x))  # Monte-Carlo moments of q
    assert post["loc"].shape == post["scale"].shape == (3, 2)


def _ridge(x=None):
    """θ ~ N(0, I_2), x ~ N(θ_1 + θ_2, 0.3²): a posterior with correlation -0.92."""
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("x", dist.Normal(theta.sum(-1), 0.3), obs=x)


def _elbo(guide, x, steps):
    pyro.set_rng_seed(0)
    guide(x)  # autoguides create their parameters on a first call
    loss = Trace_ELBO()(_ridge, guide)
    opt = torch.optim.Adam(loss.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    with torch.no_grad():
        return (
            -sum(Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(_ridge, guide, x) for _ in range(5)) / 5
        )


def test_flow_autoguide_reaches_the_evidence_on_a_correlated_posterior():
    """log p(x) = log N(x; 0, 2 + 0.09). Mean-field's best ELBO is short of it by the KL of
    the product of the marginals to a correlation -0.92 Gaussian, -½ log(1 - ρ²) ≈ 0.93 nats;
    an IAF step can represent the posterior exactly (an affine autoregressive map is a Cholesky
    factor). After 400 steps: flow within 0.35 nats (measured 0.19), mean-field short by more
    than 0.7 (measured 1.07); ELBOs from 10000 draws (s.e. ≈ 0.01)."""
    x = torch.tensor(1.3)
    evidence = float(dist.Normal(0.0, math.sqrt(2.09)).log_prob(x))
    meanfield = _elbo(AutoNormal(_ridge), x, 400)
    flow = _elbo(AutoFlowNormal(_ridge, init_to_median, 0.1, num_transforms=2, hidden=[16]), x, 400)
    assert evidence - 0.35 < flow <= evidence + 0.05
    assert meanfield < evidence - 0.7


def test_flow_guide_over_globals_is_made_for_bayesian_families():
    card = {
        "model": {"family": "gmm", "components": 2},
        "guide": {"kind": "flow", "flow_layers": 1},
        "objective": {"name": "enum"},
        "data": {"source": "iris", "standardize": True},
        "training": {"epochs": 2, "progress": False},
    }
    run = pplvm.fit(card)
    assert isinstance(run.guide, AutoFlowNormal)
    draws = run.draws(4, seed=0)
    assert draws["weights"].shape == (4, 2) and torch.allclose(draws["weights"].sum(-1), torch.ones(4))
    with pytest.raises(pplvm.IncompatibleError, match="not available"):
        make_guide(pplvm.Run.from_card({**card, "guide": {"kind": "map"}}).model, "amortized", run.dataset.train)
