"""The label posterior of a user model with discrete and continuous local latents, where no
closed form exists (:mod:`pplvm.families._pyro_posterior`): importance-sampled probabilities
and log-likelihoods against brute-force integration over a 1-D latent on a grid, with the
model's prior and with a guide that draws the label as Pyro's M2 guide does; and labels observed
where known (``obs_mask``) counted only where they are."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import user_models
from pyro import poutine

from pplvm.data import Batch
from pplvm.families import PyroConfig, PyroModel

#: importance draws per datum; the brute force grid (20001 points on [-9, 9]) is exact to ~1e-9
K_DRAWS = 4000


def m2_guide(x, y, y_mask):
    """A fixed guide drawing the missing labels (marked for enumeration, as Pyro's M2 guide
    does; importance sampling draws them) and then z given the label: wider than the posterior."""
    with pyro.plate("data", len(x)):
        with poutine.mask(mask=~y_mask):
            q_y = dist.Categorical(logits=torch.zeros(3))
            guess = pyro.sample("y_unobserved", q_y, infer={"enumerate": "parallel"})
        y = torch.where(y_mask, y, guess)
        pyro.sample("z", dist.Normal(0.2 * y.unsqueeze(-1).float(), 1.3).to_event(1))


def z_guide(x, y, y_mask):
    """A fixed guide of z alone (the label is then summed out per draw: Rao-Blackwellised)."""
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.3).to_event(1))


def _bent_mixture(guide=m2_guide):
    user = user_models.BentMixture()
    x = 2 * torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2] + [-1] * 9)  # the first three labelled
    family = PyroModel.from_config(PyroConfig(), 2, model=user, guide=guide, example=Batch(x, y=y))
    brute = user.brute_force(x)  # log p(x_n, y_n = k), (N, K)
    want_ll = torch.cat([brute[torch.arange(3), y[:3]], brute[3:].logsumexp(-1)])
    return family, family.prepare(Batch(x, y=y)), brute[3:].softmax(-1), want_ll


@pytest.mark.parametrize("proposal", ["prior", "z guide", "m2 guide"])
def test_label_posterior_and_log_likelihood_match_brute_force(proposal):
    """p(y | x) of the unlabelled rows within 4 standard errors (+1e-3: float32) of the
    integral over z, with y summed out per draw of z (prior: Rao-Blackwellised) or drawn by
    the guide (indicators); log p(x_n) (labelled rows: log p(x_n, y_n)) within 4 of its
    standard errors + 0.01 (the IWAE bias at k = 4000, O(1/k))."""
    family, batch, want_post, want_ll = _bent_mixture(z_guide if proposal == "z guide" else m2_guide)
    assert family.marginals == "estimate" and family.structure.discrete == ("y_unobserved",)
    guide = None if proposal == "prior" else family.user_guide()
    post = family.local_marginals(batch, {}, proposal=guide, num_samples=K_DRAWS, seed=1)
    probs, se = post["y_unobserved"][3:].double(), post["y_unobserved_stderr"][3:].double()
    torch.testing.assert_close(probs.sum(-1), torch.ones(9, dtype=torch.float64))
    assert bool(((probs - want_post).abs() <= 4 * se + 1e-3).all())
    assert float(se.max()) < 0.05  # informative: the band is not trivially wide

    draws = family._draws(batch, {}, guide, K_DRAWS, 2)
    ll, ll_se = draws.log_marginal(), draws.log_marginal_stderr()
    assert bool(((ll - want_ll).abs() <= 4 * ll_se + 0.01).all())
    estimate = family.log_likelihood(batch, {}, proposal=guide, num_samples=K_DRAWS, seed=2)
    torch.testing.assert_close(estimate, ll.float())
    modes = family.map_locals(batch, {}, proposal=guide, num_samples=K_DRAWS, seed=1)["y_unobserved"]
    assert modes.shape == (12,) and torch.equal(modes[3:], probs.argmax(-1))


def labelled_mixture(x, y, y_mask):
    """Three unit-variance components at shift + (-2, 0, 3) with weights 0.2, 0.3, 0.5; labels
    partly known."""
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])), obs=y, obs_mask=y_mask)
        loc = shift + torch.tensor([-2.0, 0.0, 3.0])[y].unsqueeze(-1)
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def test_partly_observed_labels_count_only_where_known():
    """Exact path: log p(x_n, y_n) where the label is known, log Σ_k p(x_n, k) where it is
    missing (the masked observation of a missing label is no part of it)."""
    x = torch.linspace(-3, 4, 8).unsqueeze(-1)
    y = torch.tensor([0, -1, 1, -1, 2, -1, -1, 2])
    family = PyroModel.from_config(PyroConfig(), 1, model=labelled_mixture, example=Batch(x, y=y))
    joint = torch.tensor([0.2, 0.3, 0.5]).log() + dist.Normal(torch.tensor([-2.0, 0.0, 3.0]), 1.0).log_prob(x)
    want = torch.where(y >= 0, joint.gather(-1, y.clamp_min(0)[:, None])[:, 0], joint.logsumexp(-1))
    shift = {"shift": torch.tensor(0.0)}
    torch.testing.assert_close(family.log_likelihood(family.prepare(Batch(x, y=y)), shift), want)
    post = family.local_marginals(family.prepare(x), shift)["y_unobserved"]  # no labels: all missing
    torch.testing.assert_close(post, joint.softmax(-1))


class FactorModel(torch.nn.Module):
    """``z_n ~ N(0, 1)``, ``x_n | z ~ N(z, 1)`` (D = 2), with an auxiliary loss on z as a
    ``pyro.factor`` (optional)."""

    def __init__(self, factor: bool):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z.expand(*z.shape[:-1], 2), 1.0).to_event(1), obs=x)
            if self.factor:
                pyro.factor("aux", 3.0 * z.sum(-1) - 1.0, has_rsample=True)


def test_pyro_factor_terms_train_but_are_no_part_of_the_log_likelihood():
    """An auxiliary loss (pyro.factor) shifts the training loss by exactly its value, and the
    estimated log p(x) not at all: the same draws give the same estimate with and without it,
    for continuous locals (importance.py) and for discrete and continuous ones (the label)."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
    with_f, without = (PyroModel.from_config(PyroConfig(), 2, model=FactorModel(f), example=x) for f in (True, False))
    guide = poutine.block(with_f, hide_fn=lambda s: s["is_observed"])  # the prior of z
    elbo = pyro.infer.Trace_ELBO()
    with poutine.seed(rng_seed=0):
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    losses = []
    for model in (with_f, without):
        with poutine.seed(rng_seed=0):  # the same draw of z as above
            losses.append(elbo.loss(model, guide, x))
    loss_f, loss = losses
    assert loss_f == pytest.approx(loss - float((3.0 * z.sum(-1) - 1.0).sum()), rel=1e-5)
    torch.testing.assert_close(with_f.log_likelihood(x, {}, seed=1), without.log_likelihood(x, {}, seed=1))

    y = torch.tensor([0, -1, 2, -1, -1, 1])
    plain, factored = (
        PyroModel.from_config(PyroConfig(), 2, model=m, guide=z_guide, example=Batch(x, y=y))
        for m in (user_models.BentMixture(), user_models.BentMixture(aux=5.0))
    )
    batch = plain.prepare(Batch(x, y=y))
    estimates = [
        m.log_likelihood(batch, {}, proposal=m.user_guide(), num_samples=50, seed=3) for m in (plain, factored)
    ]
    torch.testing.assert_close(*estimates)
