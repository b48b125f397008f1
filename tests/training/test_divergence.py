"""What a non-finite loss says: the terms that are non-finite, and the learning rate blamed only
where it can be the cause (after an update)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pplvm


def penalised_mean(x):
    """A normal mean with a pyro.factor that is -inf on every datum (a log of a zero
    probability): the loss is non-finite at the initial parameters."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)
        pyro.factor("penalty", torch.where(x[:, 0] > 100, 0.0, -torch.inf))


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
def test_a_loss_non_finite_before_any_update_names_the_site_and_not_the_learning_rate():
    card = {
        "model": {"family": "pyro"},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "elbo"},
        "data": {"source": "iris"},
        "training": {"epochs": 2, "progress": False},
    }
    with pytest.raises(pplvm.TrainingError) as err:
        pplvm.fit(card, model=penalised_mean)
    text = str(err.value)
    assert "at epoch 1, step 1" in text and "before any update, so the learning rate is not the cause" in text
    assert "the model's site 'penalty' (-inf in 120 entries)" in text  # 120 training rows of iris
    assert "Try a smaller training.lr" not in text and "\n" not in text
