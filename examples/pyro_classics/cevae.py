"""The causal effect VAE (Louizos et al. 2017) as Pyro's ``pyro.contrib.cevae`` writes it, on the
synthetic data of Pyro's ``examples/contrib/cevae/synthetic.py``.

A hidden confounder ``z`` drives the features ``x``, the treatment ``t`` and the outcome ``y``::

    z ~ N(0, I_L)
    x | z ~ N(f(z), diag softplus(s(z)))          the features: pplvm's data
    t | z ~ Bernoulli(logits = g(z))              observed: a named input of the data
    y | t, z ~ Bernoulli(logits = h_t(z))         observed: the data's labels y

pplvm passes ``t`` and ``y`` by keyword (the ``arrays`` source: ``data/cevae.npz``), scores
``log p(x, t, y)``, and the guide is the module's ``guide`` method, as Pyro's ``Guide``:
``q(t | x)``-free ``q(z | x, t, y)`` from one network per treatment arm. ``ite(x)`` is the
individual treatment effect ``E[y | do(t=1), x] − E[y | do(t=0), x]`` under that guide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

DATA = Path(__file__).parent / "data" / "cevae.npz"


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ELU()]
    return nn.Sequential(*layers[:-1])


class CEVAE(PyroModule):
    """``forward(x, t, y)`` is the model, ``guide(x, t, y)`` the guide: ``x`` ``(B, F)``
    features, ``t`` and ``y`` ``(B,)`` in {0, 1}."""

    def __init__(self, feature_dim: int = 5, latent_dim: int = 5, hidden: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        self.x_nn = _mlp([latent_dim, hidden, 2 * feature_dim])
        self.t_nn = _mlp([latent_dim, hidden, 1])
        self.y_nn = nn.ModuleList([_mlp([latent_dim, hidden, 1]) for _ in range(2)])
        self.z_nn = nn.ModuleList([_mlp([feature_dim + 1, hidden, 2 * latent_dim]) for _ in range(2)])

    def forward(self, x, t, y):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([self.latent_dim]).to_event(1))
            loc, scale = self.x_nn(z).chunk(2, -1)
            pyro.sample("x", dist.Normal(loc, nn.functional.softplus(scale) + 1e-3).to_event(1), obs=x)
            t = pyro.sample("t", dist.Bernoulli(logits=self.t_nn(z).squeeze(-1)), obs=t.float())
            logits = torch.where(t > 0, self.y_nn[1](z).squeeze(-1), self.y_nn[0](z).squeeze(-1))
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y.float())

    def guide(self, x, t, y):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(*self._q(x, t.float(), y.float())).to_event(1))

    def _q(self, x, t, y):
        arms = [self.z_nn[k](torch.cat([x, y.unsqueeze(-1)], -1)).chunk(2, -1) for k in range(2)]
        loc = torch.where(t.unsqueeze(-1) > 0, arms[1][0], arms[0][0])
        scale = torch.where(t.unsqueeze(-1) > 0, arms[1][1], arms[0][1])
        return loc, nn.functional.softplus(scale) + 1e-3

    @torch.no_grad()
    def ite(self, x, t, y, draws: int = 100) -> torch.Tensor:
        """``E[y | do(t=1), x] − E[y | do(t=0), x]`` per row, z drawn from the guide (B,)."""
        loc, scale = self._q(x, t.float(), y.float())
        z = dist.Normal(loc, scale).sample((draws,))
        p = [torch.sigmoid(self.y_nn[k](z).squeeze(-1)).mean(0) for k in range(2)]
        return p[1] - p[0]


def simulate(n: int = 1000, feature_dim: int = 5, seed: int = 0) -> dict:
    """Pyro's synthetic CEVAE data: a binary confounder z; x ~ N(z, 5z + 3(1 − z)) per feature,
    t ~ Bernoulli(0.75z + 0.25(1 − z)), y ~ Bernoulli(logits = 3(z + 2(2t − 1)))."""
    rng = np.random.default_rng(seed)
    z = rng.integers(2, size=n).astype(np.float64)
    x = rng.normal(z[:, None], (5 * z + 3 * (1 - z))[:, None], size=(n, feature_dim))
    t = (rng.random(n) < 0.75 * z + 0.25 * (1 - z)).astype(np.int64)
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * (z + 2 * (2 * t - 1))))).astype(np.int64)
    return {"x": x, "t": t, "y": y, "z": z}


def write_data(path: Path = DATA) -> None:
    """Write :func:`simulate`'s default draw as the shipped ``.npz`` (x, t, y)."""
    data = simulate()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=data["x"], t=data["t"], y=data["y"])


if __name__ == "__main__":
    write_data()
