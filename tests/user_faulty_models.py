"""User Pyro models with a fault a user makes, each to be refused in one line before any run
directory exists (``tests/test_faults_user_models.py``; cards name them as
``model.target = "user_faulty_models:<name>"``). The data they meet: 2-column real rows."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam


def too_wide(x):
    """Observes 3 columns where the data have 2."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)


def poisson_on_reals(x):
    """A count likelihood on real-valued data (negative, fractional): outside its support."""
    rate = pyro.sample("rate", dist.Gamma(1.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Poisson(rate).expand([x.shape[1]]).to_event(1), obs=x)


class NaNScale(PyroModule):
    """Its scale parameter is NaN from construction."""

    def __init__(self):
        super().__init__()
        self.scale = PyroParam(torch.full((), float("nan")))

    def forward(self, x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, self.scale).to_event(1), obs=x)


def fails_on_full_batches(x):
    """Fine on the few rows it is probed on; raises on a training batch."""
    if len(x) > 8:
        raise ValueError("this model cannot take more than 8 rows")
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)


def covariates_from_x(x):
    """Regresses the last column on the first, read from x outside the observation."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(w * x[:, 0], 1.0), obs=x[:, 1])


def fails_in_training(x):
    """Fine wherever pplvm calls it without gradients (its probes, the guide's first call);
    raises in a training step."""
    if torch.is_grad_enabled():
        raise RuntimeError("CUDA out of memory (simulated)")
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)
