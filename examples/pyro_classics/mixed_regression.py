"""A mixture of regressions with group effects, written in Pyro with named inputs.

Each datum is a response ``x_n`` (one column) with covariates ``u_n`` (``(L,)``) and a group
index ``g_n``; a latent component ``c_n`` picks one of K regression lines, and every group
shifts its data by a random intercept::

    π ~ Dirichlet(1),  τ ~ HalfNormal(1)
    a_k ~ N(0, 5²),  w_k ~ N(0, 2² I_L),  σ_k ~ LogNormal(-1, 1)      k = 1..K   (plate "components")
    b_g ~ N(0, τ²)                                                      g = 1..G   (plate "groups")
    c_n ~ Categorical(π)                                                           (enumerated)
    x_n | c_n, g_n, u_n ~ N(a_c + w_c·u_n + b_g, σ_c²)

pplvm passes ``u`` and ``group`` by keyword (their names in the data: the card's
``data.source = "arrays"`` file, ``examples/pyro_classics/data/mixed_regression.npz``, made by
:func:`simulate`); ``c`` is summed out exactly (``objective.name = "enum"``), and the globals
get an autoguide. The card: ``examples/pyro_classics/mixed_regression.toml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

DATA = Path(__file__).parent / "data" / "mixed_regression.npz"


class MixedRegression(PyroModule):
    """``forward(x, u, group)``: ``x`` ``(B, 1)`` responses, ``u`` ``(B, L)`` covariates,
    ``group`` ``(B,)`` indices in ``0..G-1``."""

    def __init__(self, components: int = 2, covariates: int = 2, groups: int = 8):
        super().__init__()
        self.K, self.L, self.G = components, covariates, groups
        self.register_buffer("zero", torch.zeros(()), persistent=False)  # the priors follow .to(device)

    def forward(self, x, u, group):
        zero, one = self.zero, self.zero + 1
        pi = pyro.sample("pi", dist.Dirichlet(one.expand(self.K)))
        tau = pyro.sample("tau", dist.HalfNormal(one))
        with pyro.plate("components", self.K):
            a = pyro.sample("a", dist.Normal(zero, 5 * one))
            w = pyro.sample("w", dist.Normal(zero, 2 * one).expand([self.L]).to_event(1))
            sigma = pyro.sample("sigma", dist.LogNormal(zero - 1, one))
        with pyro.plate("groups", self.G):
            b = pyro.sample("b", dist.Normal(zero, tau))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(pi))  # (B,), or (K, 1) when enumerated
            mean = a[..., c] + (w[..., c, :] * u).sum(-1) + b[..., group]
            pyro.sample("obs", dist.Normal(mean.unsqueeze(-1), sigma[..., c].unsqueeze(-1)).to_event(1), obs=x)


def simulate(n: int = 600, components: int = 2, covariates: int = 2, groups: int = 8, seed: int = 0) -> dict:
    """Draw data from the model with fixed parameters: ``{"x": (n, 1), "u": (n, L), "group": (n,)}``
    and the truth (``c``, ``a``, ``w``, ``sigma``, ``b``)."""
    rng = np.random.default_rng(seed)
    a = np.linspace(-3.0, 3.0, components)
    w = rng.normal(0.0, 1.5, size=(components, covariates))
    sigma = np.full(components, 0.3)
    b = rng.normal(0.0, 1.0, size=groups)
    u = rng.normal(size=(n, covariates))
    group = rng.integers(groups, size=n)
    c = rng.integers(components, size=n)
    x = a[c] + (w[c] * u).sum(-1) + b[group] + sigma[c] * rng.normal(size=n)
    return {"x": x[:, None], "u": u, "group": group, "truth": {"c": c, "a": a, "w": w, "sigma": sigma, "b": b}}


def write_data(path: Path = DATA) -> None:
    """Write :func:`simulate`'s default draw as the shipped ``.npz`` (x, u, group)."""
    data = simulate()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=data["x"], u=data["u"], group=data["group"])


if __name__ == "__main__":
    write_data()
