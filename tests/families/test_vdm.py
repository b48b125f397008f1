"""The VDM family (:mod:`pplvm.families.vdm`): its continuous-time bound against the discrete-time
bound of the same schedule at large T, the learned schedule's monotonicity and its
variance-minimising gradient, and a tiny fit that improves the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pplvm
from pplvm.families.diffusion import Diffusion
from pplvm.families.vdm import VariationalDiffusion, VDMConfig


def _model(steps=500, **kw) -> VariationalDiffusion:
    torch.manual_seed(0)
    model = VariationalDiffusion(VDMConfig(steps=steps, hidden=[16, 16], embed_dim=8, **kw), 2).double()
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.gamma.w3.zero_()  # g linear: γ(s) = γ_0 + (γ_1 - γ_0) s
    return model


def test_continuous_loss_equals_the_discrete_bound_at_large_T():
    """With a fixed linear γ (-6 .. 5) and the same ε-predictor, the continuous-time diffusion
    loss L_∞ (Monte Carlo: 64 times per datum over 300 data) equals Σ_{t=2..T} L_{t-1} of the
    T = 500-step chain with ᾱ_t = sigmoid(-γ(s_t)) (the family's own discretisation) within 4
    standard errors plus 1% (the discrete bound exceeds L_∞ by O(1/T))."""
    model = _model(gamma_start=-6.0, gamma_end=5.0)
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        cont = model.vdm_terms(x, 64, generator=torch.Generator().manual_seed(2))["L_diffusion"]
    discrete = Diffusion.likelihood_terms(model, x, {}, seed=3)
    steps = torch.stack([discrete[f"L_{t}"] for t in range(1, model.steps)], -1).sum(-1)
    diff = steps - cont
    se = float(diff.std()) / math.sqrt(len(diff))
    assert abs(float(diff.mean())) < 4 * se + 0.01 * float(cont.mean()), (float(diff.mean()), se, float(cont.mean()))


def test_the_schedule_is_monotone_and_its_shape_gets_the_variance_gradient():
    """γ is increasing from γ_0 to γ_1 with γ' > 0 at random parameters; the gradient the loss
    sends to the schedule's shape parameters is that of Σ L_∞² per draw over 2 mean(L_∞) (autograd
    of the squared loss with the same draws), while the endpoints get the bound's own gradient."""
    model = _model(steps=10)
    with torch.no_grad():
        for p in model.gamma.parameters():
            p.add_(torch.randn_like(p))
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    gamma, dgamma = model.gamma(s)
    g0, g1 = model.gamma.endpoints()
    assert (gamma.diff() > 0).all() and (dgamma > 0).all()
    torch.testing.assert_close(gamma[[0, -1]], torch.stack([g0, g1]).detach())
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shape_params = [model.gamma.w1, model.gamma.b1, model.gamma.w2, model.gamma.b2, model.gamma.w3]

    def grads(loss):
        return torch.autograd.grad(loss, shape_params + [model.gamma.gamma_0], allow_unused=True)

    terms = model.vdm_terms(x, 3, variance_gradient=True, generator=torch.Generator().manual_seed(5))
    hooked = grads(terms["L_diffusion"].sum())
    plain = model.vdm_terms(x, 3, generator=torch.Generator().manual_seed(5))
    rows = plain["L_diffusion"]  # the per-datum mean over 3 draws; squared per draw below
    squares, mean = _per_draw_squares(model, x, 3, 5)
    squared = grads(squares)
    for h, q in zip(hooked[:-1], squared[:-1]):
        torch.testing.assert_close(h, q / 3 / (2 * mean))  # over 2 mean(L_∞): the bound's magnitude
    torch.testing.assert_close(hooked[-1], grads(rows.sum())[-1])  # γ_0: the bound's gradient


def _per_draw_squares(model, x, times, seed):
    """Σ over draws of L_∞(draw)² and the draws' mean L_∞ (detached), the draws those of
    ``vdm_terms`` with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    kw = {"dtype": x.dtype}
    n = len(x) * times
    u = torch.rand((), generator=g, **kw)
    s = (u + torch.arange(n, **kw) / n) % 1.0
    gamma, dgamma = model.gamma(s)
    noise = torch.randn(n, 2, generator=g, **kw)
    z = torch.sigmoid(-gamma).sqrt()[:, None] * x.repeat(times, 1) + torch.sigmoid(gamma).sqrt()[:, None] * noise
    loss = 0.5 * dgamma * ((noise - model.epsilon(z, s)) ** 2).sum(-1)
    return (loss**2).sum(), loss.detach().mean()


def test_a_tiny_fit_improves_the_bound_and_keeps_the_schedule_monotone():
    """5 epochs on 2-D Gaussian data: the held-out continuous-time bound rises by more than 1 nat
    from the untrained model's, and the learned γ stays increasing."""
    x = np.random.default_rng(0).multivariate_normal([0.5, -1.0], [[1.0, 0.6], [0.6, 0.5]], size=600)
    card = {
        "model": {"family": "vdm", "steps": 20, "hidden": [32, 32], "embed_dim": 8, "likelihood_times": 16},
        "guide": {"kind": "forward"},
        "objective": {"name": "vdm", "num_particles": 2},
        "data": {"source": "file", "path": "unused", "valid_fraction": 0.25},
        "training": {"epochs": 5, "batch_size": 100, "lr": 3e-3, "progress": False, "eval_every": 1000},
    }
    run = pplvm.fit(card, data=x)
    valid = run.dataset.valid
    torch.manual_seed(0)
    untrained = VariationalDiffusion(VDMConfig(**card["model"]), 2)
    trained = run.model.log_likelihood(valid, {}).mean()
    assert float(trained) > float(untrained.log_likelihood(valid, {}).mean()) + 1.0
    gamma, dgamma = run.model.gamma(torch.linspace(0, 1, 50))
    assert (gamma.diff() > 0).all() and (dgamma > 0).all()


def test_vdm_cards_are_checked():
    """A discrete schedule's fields and the discrete-time objective are refused in one line."""
    card = {
        "model": {"family": "vdm", "steps": 4, "hidden": [8]},
        "guide": {"kind": "forward"},
        "objective": {"name": "diffusion"},
        "data": {"source": "file", "path": "unused"},
        "training": {"epochs": 1, "progress": False},
    }
    with pytest.raises(pplvm.IncompatibleError, match="use objective.name = 'vdm'"):
        pplvm.fit(card, data=np.zeros((20, 2)))
    card["objective"] = {"name": "vdm"}
    for model, message in (
        ({"beta_start": 0.1}, "model.beta_start: not used by model.family = 'vdm'"),
        ({"gamma_start": 1.0, "gamma_end": 0.0}, "model.gamma_end: expected above"),
    ):
        with pytest.raises(pplvm.CardError, match=message):
            pplvm.fit({**card, "model": {**card["model"], **model}}, data=np.zeros((20, 2)))
