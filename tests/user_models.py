"""Pyro models written the way a user writes them, for the ``pyro`` family's tests and the
contract suite (cards name them as ``model.target = "user_models:<name>"``; pytest puts
``tests/`` on the path)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints

K = 3


def gmm(x):
    """A Bayesian Gaussian mixture with the built-in ``gmm`` family's sites and priors (diag
    covariance, default hyperparameters), written in plain Pyro: ``x`` is ``(B, D)``."""
    D = x.shape[1]
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    with pyro.plate("components", K, dim=-1):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
        scales = pyro.sample("scales", dist.LogNormal(0.0, 2.0).expand([D]).to_event(1))
    with pyro.plate("data", len(x), dim=-1):
        z = pyro.sample("assignment", dist.Categorical(weights))
        loc = Vindex(locs.unsqueeze(-3))[..., z, :]
        scale = Vindex(scales.unsqueeze(-3))[..., z, :]
        return pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=x)


class BayesianPPCA(PyroModule):
    """``W ~ N(0, 1)^{L×D}``, ``z_n ~ N(0, I_L)``, ``x_n | z_n ~ N(W z_n + μ, σ² I)`` with μ and σ
    point estimates (PyroParam) and W a global latent: a class built with ``options``."""

    def __init__(self, dim: int, latent_dim: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.W = PyroSample(dist.Normal(0.0, 1.0).expand([latent_dim, dim]).to_event(2))
        self.mu = PyroParam(torch.zeros(dim))
        self.sigma = PyroParam(torch.ones(()), constraint=constraints.positive)

    def forward(self, x):
        W = self.W
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            return pyro.sample("x", dist.Normal(z @ W + self.mu, self.sigma).to_event(1), obs=x)


def normal_mean(x):
    """Unknown mean and scale, no local latents: ``μ ~ N(0, 10)^D``, ``σ ~ LogNormal(0, 1)``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, sigma).to_event(1), obs=x)


class NormalMeanGuide(PyroModule):
    """:func:`normal_mean`'s guide as a PyroModule: q(μ) = N(m, s), q(σ) = LogNormal(a, b)."""

    def __init__(self, dim: int):
        super().__init__()
        self.m = PyroParam(torch.zeros(dim))
        self.s = PyroParam(torch.full((dim,), 0.1), constraint=constraints.positive)
        self.a = PyroParam(torch.zeros(()))
        self.b = PyroParam(torch.full((), 0.1), constraint=constraints.positive)

    def forward(self, x):
        pyro.sample("mu", dist.Normal(self.m, self.s).to_event(1))
        pyro.sample("sigma", dist.LogNormal(self.a, self.b))


# ------------------------------------------------------------ models pplvm must refuse
def no_plate(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("obs", dist.Normal(mu, 1.0).expand(x.shape).to_event(2), obs=x)


def no_observation(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def discrete_global(x):
    k = pyro.sample("k", dist.Categorical(torch.ones(3)))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(k.float(), 1.0).expand([len(x), x.shape[1]]).to_event(1), obs=x)


def unbounded_local(x):
    with pyro.plate("data", len(x)):
        n = pyro.sample("n", dist.Poisson(3.0))
        pyro.sample("obs", dist.Normal(n.unsqueeze(-1), 1.0).expand([len(x), x.shape[1]]).to_event(1), obs=x)


def global_param(x):
    mu = pyro.param("mu", torch.zeros(x.shape[1]))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)


def param_guide(x):
    """A guide written with pyro.param (refused: pplvm keeps parameters in modules)."""
    loc = pyro.param("mu_loc", torch.zeros(x.shape[1]))
    pyro.sample("mu", dist.Normal(loc, 0.1).to_event(1))
    pyro.sample("sigma", dist.LogNormal(0.0, 0.1))


def partial_guide(x):
    """A guide that forgets ``sigma``."""
    pyro.sample("mu", dist.Normal(torch.zeros(x.shape[1]), 0.1).to_event(1))


def broken(x):
    raise ValueError("this model is broken")


NOT_A_MODEL = 3


def calibration_normal(x):
    """``μ ~ N(0, 1)^D``, ``σ ~ LogNormal(0, 0.3)``, ``x_n ~ N(μ, σ)``: a small model for SBC."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.3))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, sigma).to_event(1), obs=x)


class MixtureOfFactorAnalysers(PyroModule):
    """``c_n ~ Cat(softmax(a))``, ``z_n ~ N(0, I_L)``, ``x_n | c, z ~ N(μ_c + z W_c, diag ψ²)``:
    a discrete and a continuous local latent, point-estimated parameters. The marginal is
    ``Σ_c π_c N(x | μ_c, W_cᵀ W_c + diag ψ²)`` in closed form (:meth:`marginal`)."""

    def __init__(self, dim: int, components: int = 2, latent_dim: int = 1):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.logits = PyroParam(torch.zeros(components))
        self.W = PyroParam(0.5 * torch.randn(components, latent_dim, dim, generator=gen))
        self.mu = PyroParam(torch.randn(components, dim, generator=gen))
        self.psi = PyroParam(torch.ones(dim), constraint=constraints.positive)
        self.latent_dim = latent_dim

    def forward(self, x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            loc = Vindex(self.mu)[..., c, :] + (z.unsqueeze(-2) @ Vindex(self.W)[..., c, :, :]).squeeze(-2)
            return pyro.sample("obs", dist.Normal(loc, self.psi).to_event(1), obs=x)

    @torch.no_grad()
    def marginal(self, x):
        cov = self.W.transpose(-1, -2) @ self.W + torch.diag_embed(self.psi.pow(2))  # (K, D, D)
        comp = dist.MultivariateNormal(self.mu, covariance_matrix=cov).log_prob(x.unsqueeze(-2))  # (N, K)
        return (self.logits.log_softmax(-1) + comp).logsumexp(-1)


class BatchNormMixture(PyroModule):
    """``w ~ Dir(1)``, ``z_n ~ Cat(w)``, ``x_n | z_n ~ N(f(onehot(z_n)), diag σ²)``: a mixture whose
    component means come from a decoder network with ``BatchNorm1d`` and ``Dropout`` (both act
    differently in ``.train()`` and ``.eval()``); σ a point estimate. In eval mode the marginal is
    ``logsumexp_k log w_k + log N(x | f(e_k), σ²)`` (:meth:`marginal`)."""

    def __init__(self, dim: int, components: int = K, hidden: int = 8):
        super().__init__()
        self.components = components
        self.decoder = nn.Sequential(
            nn.Linear(components, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Dropout(0.5), nn.Linear(hidden, dim)
        )
        self.log_scale = PyroParam(torch.zeros(dim))

    def means(self, z: torch.Tensor) -> torch.Tensor:
        """``f(onehot(z))``: ``z`` of any shape (enumerated: ``(K, 1)``) to ``(*z.shape, D)``."""
        code = F.one_hot(z, self.components).float()
        return self.decoder(code.reshape(-1, self.components)).reshape(*z.shape, -1)

    def forward(self, x):
        w = pyro.sample("weights", dist.Dirichlet(torch.ones(self.components)))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            return pyro.sample("obs", dist.Normal(self.means(z), self.log_scale.exp()).to_event(1), obs=x)

    @torch.no_grad()
    def marginal(self, x, weights):
        """``log p(x_n | w)`` ``(N,)`` with the decoder as it is (call it in ``.eval()``)."""
        comp = dist.Normal(self.means(torch.arange(self.components)), self.log_scale.exp()).to_event(1)
        return (weights.log() + comp.log_prob(x.unsqueeze(-2))).logsumexp(-1)


class EncoderPPCAGuide(PyroModule):
    """:class:`BayesianPPCA`'s guide: ``q(W)`` a mean-field normal, ``q(z_n | x_n)`` a normal from
    an encoder network with ``BatchNorm1d`` (which cannot take a single row in ``.train()``)."""

    def __init__(self, dim: int, latent_dim: int = 2, hidden: int = 8):
        super().__init__()
        self.W_loc = PyroParam(torch.zeros(latent_dim, dim))
        self.W_scale = PyroParam(torch.full((latent_dim, dim), 0.1), constraint=constraints.positive)
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim)
        )

    def forward(self, x):
        pyro.sample("W", dist.Normal(self.W_loc, self.W_scale).to_event(2))
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))


class BentMixture(PyroModule):
    """A label observed where known (``obs_mask``) beside a continuous local, with no closed-form
    posterior: ``y_n ~ Cat(softmax(a))``, ``z_n ~ N(0, 1)``, ``x_n | y, z ~ N(μ_y + w_y z², σ² I)``.
    :meth:`brute_force` integrates z out on a grid: ``log p(x_n, y_n = k)`` ``(N, K)``. With
    ``aux``, an auxiliary loss ``aux · Σ_d x_nd`` on the labelled rows (a ``pyro.factor``)."""

    def __init__(self, dim: int = 2, components: int = 3, aux: float = 0.0):
        super().__init__()
        self.aux = aux
        gen = torch.Generator().manual_seed(3)
        self.logits = PyroParam(torch.tensor([0.3, -0.2, 0.0])[:components])
        self.mu = PyroParam(torch.randn(components, dim, generator=gen))
        self.w = PyroParam(torch.randn(components, dim, generator=gen))
        self.sigma = PyroParam(torch.tensor(0.6), constraint=constraints.positive)

    def forward(self, x, y, y_mask):
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Categorical(logits=self.logits), obs=y, obs_mask=y_mask)
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            loc = Vindex(self.mu)[..., y, :] + Vindex(self.w)[..., y, :] * z.pow(2)
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)
            if self.aux:
                pyro.factor("classify", self.aux * y_mask * x.sum(-1), has_rsample=False)

    @torch.no_grad()
    def brute_force(self, x, points: int = 20001, width: float = 9.0):
        z = torch.linspace(-width, width, points, dtype=torch.float64)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z) + math.log(z[1] - z[0])  # (G,)
        mu, w = self.mu.double(), self.w.double()
        loc = mu[:, None, None] + w[:, None, None] * z.pow(2)[:, None, None]  # (K, G, 1, D)
        log_px = dist.Normal(loc, self.sigma.double()).log_prob(x.double()).sum(-1)  # (K, G, N)
        joint = (log_px + log_pz[:, None]).logsumexp(1)  # (K, N)
        return (self.logits.double().log_softmax(-1)[:, None] + joint).T
