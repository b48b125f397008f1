"""The ODE machinery of :mod:`pplvm.inference.prob_flow` against closed forms: the RK45 solver
on linear ODEs, Hutchinson's divergence against the exact trace, and the change of variables
through a linear flow."""

from __future__ import annotations

import math

import torch

from pplvm.inference.prob_flow import divergence, dopri5, flow_log_density, probes


def test_dopri5_solves_a_linear_system_to_its_tolerance():
    """dy/dt = A y (a rotation with decay): the solution exp(tA) y0 to 1e-7 at rtol = atol = 1e-9,
    and a looser tolerance takes fewer evaluations."""
    a = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0], [0.5, -2.0], [3.0, 1.0]], dtype=torch.float64)
    y1, tight = dopri5(lambda y, t: y @ a.T, y0, 0.0, 2.0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y1, y0 @ torch.linalg.matrix_exp(2.0 * a).T, atol=1e-7, rtol=0)
    _, loose = dopri5(lambda y, t: y @ a.T, y0, 0.0, 2.0, rtol=1e-4, atol=1e-4)
    assert loose.nfe < tight.nfe


def test_dopri5_follows_time_dependent_rates():
    """dy/dt = -2 t y: y0 exp(-t²), from t = 0.5 to 1.5."""
    y0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    y1, _ = dopri5(lambda y, t: -2 * t * y, y0, 0.5, 1.5, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y1, y0 * math.exp(-(1.5**2) + 0.5**2), atol=1e-8, rtol=0)


def test_hutchinson_divergence_is_unbiased_for_the_trace():
    """For f(z) = tanh(z W) the mean over 20000 Rademacher (and Gaussian) probes of vᵀ J v equals
    the exact divergence within 5 standard errors; the exact one equals Σ_i (1 - tanh²) W_ii."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def f(z, t):
        return torch.tanh(z @ w)

    z = torch.randn(1, 3, generator=g, dtype=torch.float64).expand(20_000, 3)
    _, exact = divergence(f, z[:1], 0.0, None)
    expected = ((1 - torch.tanh(z[:1] @ w) ** 2) * torch.diagonal(w)).sum(-1)
    torch.testing.assert_close(exact, expected)
    for kind in ("rademacher", "gaussian"):
        _, est = divergence(f, z, 0.0, probes(z.shape, kind, z, g))
        assert abs(float(est.mean() - exact)) < 5 * float(est.std()) / math.sqrt(len(est)), kind


def test_change_of_variables_through_a_linear_flow():
    """dz/dt = A z carries N(0, I) at t = 1 back to N(0, e^{-A} e^{-Aᵀ}) at t = 0: the ODE's
    log-density equals that Gaussian's, to 1e-6 with the exact divergence."""
    a = torch.tensor([[0.4, 0.3], [-0.2, -0.5]], dtype=torch.float64)
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def end(z):
        return torch.distributions.Normal(torch.zeros_like(z), 1.0).log_prob(z).sum(-1)

    lp, _ = flow_log_density(lambda z, t: z @ a.T, z0, 0.0, 1.0, end, divergence_kind="exact", rtol=1e-9, atol=1e-9)
    m = torch.linalg.matrix_exp(-a)
    closed = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=z0.dtype), m @ m.T).log_prob(z0)
    torch.testing.assert_close(lp, closed, atol=1e-6, rtol=0)
