"""A linear-Gaussian latent model with closed forms, the oracle of the estimator tests.

    z_n ~ Normal(0, I_L),   x_n | z_n ~ Normal(W z_n + b, σ² I_D)
    =>  x_n ~ Normal(b, W Wᵀ + σ² I_D)                                   (PPCA marginal)
        z_n | x_n ~ Normal(P⁻¹ Wᵀ (x_n − b) / σ², P⁻¹),  P = I + WᵀW / σ²

With W = Q diag(d) (orthonormal columns Q) the posterior covariance is diagonal, so the
diagonal Gaussian guides below can represent the exact posterior. For a guide
``q(z_n) = Normal(m_n, diag s_n²)`` the ELBO is closed form (:func:`analytic_elbo`).

This is a test oracle, not a pplvm family (PPCA is written elsewhere).
"""

from __future__ import annotations

import math
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pplvm.data.base import as_matrix
from pplvm.families.base import ContinuousLatentModel, FamilyConfig


class LinearGaussianConfig(FamilyConfig):
    family: Literal["linear_gaussian"] = "linear_gaussian"
    latent_dim: int = 2


class LinearGaussian(ContinuousLatentModel):
    """Parameters W ``(D, L)``, b ``(D,)`` and log σ ``()`` are torch parameters of the model."""

    Config = LinearGaussianConfig
    guides = ("amortized",)
    objectives = ("elbo", "iwae", "renyi")
    local_sites = ("z",)
    likelihood = "exact"

    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float):
        D, L = W.shape
        super().__init__(LinearGaussianConfig(latent_dim=L), D)
        self.W = torch.nn.Parameter(W.clone())
        self.b = torch.nn.Parameter(b.clone())
        self.log_sigma = torch.nn.Parameter(torch.tensor(math.log(sigma), dtype=W.dtype))
        self.calls: list[tuple[int, ...]] = []  # shapes of the likelihood's loc, for memory tests

    @property
    def global_sites(self):
        return ()

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def forward(self, x=None, num_data=None):
        L = self.latent_dim
        with self.data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(self.W.new_zeros(L), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            self.calls.append(tuple(loc.shape))
            return pyro.sample("obs", dist.Normal(loc, self.log_sigma.exp()).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.W @ self.W.T + self.log_sigma.exp() ** 2 * torch.eye(self.dim, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, cov)

    def log_likelihood(self, x, params=None):
        return self.marginal().log_prob(x)

    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(loc (N, L), scale (L,))`` of ``p(z_n | x_n)``; the scale is exact only when
        WᵀW is diagonal (as :func:`make_model` builds it)."""
        s2 = self.log_sigma.exp() ** 2
        P = torch.eye(self.latent_dim, dtype=self.W.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(P)
        return (x - self.b) @ self.W @ cov.T / s2, cov.diagonal().sqrt()

    def init_values(self, x, generator):
        return {}

    def prepare(self, data, name="data"):
        return as_matrix(data, name, dim=self.dim)

    def check_data(self, x):
        pass

    def plots(self, x, params):
        return {}

    def make_encoder(self) -> torch.nn.Module:
        return LinearEncoder(self.dim, self.latent_dim, self.W.dtype)


class LinearEncoder(torch.nn.Module):
    """``loc = x Aᵀ + c``, ``scale = exp(log_s)``: can hold the exact posterior of the model."""

    def __init__(self, D: int, L: int, dtype=torch.float32):
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(L, D, dtype=dtype))
        self.c = torch.nn.Parameter(torch.zeros(L, dtype=dtype))
        self.log_s = torch.nn.Parameter(torch.zeros(L, dtype=dtype))

    def forward(self, x):
        loc = x @ self.A.T + self.c
        return loc, self.log_s.exp().expand(loc.shape)

    @torch.no_grad()
    def set_posterior(self, model: LinearGaussian, inflate: float = 1.0, shift: float = 0.0) -> None:
        """Set to the exact posterior (``inflate`` > 1 widens it, ``shift`` moves its mean)."""
        s2 = model.log_sigma.exp() ** 2
        P = torch.eye(model.latent_dim, dtype=model.W.dtype) + model.W.T @ model.W / s2
        cov = torch.linalg.inv(P)
        self.A.copy_(cov @ model.W.T / s2)
        self.c.copy_(-self.A @ model.b + shift)
        self.log_s.copy_(cov.diagonal().sqrt().log() + math.log(inflate))


class PerDatumGuide(PyroModule):
    """``q(z_n) = Normal(loc_n, diag exp(log_scale_n))`` with free per-datum parameters, so the
    gradient with respect to row n of ``loc`` / ``log_scale`` is one draw of the estimator for
    datum n: replicating a datum R times gives R independent gradient draws in one backward."""

    def __init__(self, model: LinearGaussian, loc: torch.Tensor, log_scale: torch.Tensor):
        super().__init__()
        self._model = (model,)
        self.loc = torch.nn.Parameter(loc.clone())
        self.log_scale = torch.nn.Parameter(log_scale.clone())

    def forward(self, x, num_data=None):
        with self._model[0].data_plate(x, num_data):
            return pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()).to_event(1))


def analytic_elbo(model: LinearGaussian, x, loc, scale) -> torch.Tensor:
    """``E_q[log p(x_n, z) − log q(z)]`` for ``q = Normal(loc (N, L), scale (N, L))``, ``(N,)``."""
    D, L = model.W.shape
    s2 = model.log_sigma.exp() ** 2
    resid = x - loc @ model.W.T - model.b
    trace = (scale**2 * (model.W**2).sum(0)).sum(-1)  # tr(W diag(s²) Wᵀ)
    lik = -0.5 * D * torch.log(2 * math.pi * s2) - ((resid**2).sum(-1) + trace) / (2 * s2)
    prior = -0.5 * L * math.log(2 * math.pi) - 0.5 * ((loc**2).sum(-1) + (scale**2).sum(-1))
    entropy = torch.log(scale).sum(-1) + 0.5 * L * (1 + math.log(2 * math.pi))
    return lik + prior + entropy


def make_model(D: int = 4, L: int = 2, sigma: float = 0.7, seed: int = 0, dtype=torch.float64) -> LinearGaussian:
    """W with orthogonal columns (norms 1.5, 0.8, ...), so the posterior is diagonal."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=dtype))
    d = torch.linspace(1.5, 0.8, L, dtype=dtype)
    return LinearGaussian(Q * d, torch.randn(D, generator=g, dtype=dtype) * 0.5, sigma)


def sample_data(model: LinearGaussian, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m = model.marginal()
        eps = torch.randn(n, model.dim, generator=g, dtype=model.W.dtype)
        return m.loc + eps @ m.scale_tril.T
