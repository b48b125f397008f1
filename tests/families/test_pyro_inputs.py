"""What a user's Pyro model receives beside its data (:mod:`pplvm.families._pyro_inputs`):
sequences with lengths and masks, labels with missing entries, named inputs; checked against
brute force and closed forms, and the one-line refusals of models that do not fit their data."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pplvm
from pplvm.data import Batch
from pplvm.errors import CardError
from pplvm.families import PyroConfig, PyroModel

K, D = 2, 2


# --------------------------------------------------------------------- the models
def hmm(x, mask):
    """An HMM as Pyro's examples write one: a state and an observation per step, masked past
    each sequence's length; x is (B, T, D) padded."""
    trans = pyro.sample("trans", dist.Dirichlet(torch.ones(K, K) + 4 * torch.eye(K)).to_event(1))
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([K, D]).to_event(2))
    with pyro.plate("seqs", len(x), dim=-1):
        z = 0
        for t in pyro.markov(range(x.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Categorical(trans[z]).mask(mask[:, t]))
            pyro.sample(f"x_{t}", dist.Normal(locs[z], 1.0).to_event(1).mask(mask[:, t]), obs=x[:, t])


def labelled_mixture(x, y, y_mask):
    """A mixture whose component is observed where the label is known, enumerated elsewhere."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(K)))
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([K, D]).to_event(2))
    with pyro.plate("data", len(x)):
        z = pyro.sample("y", dist.Categorical(w), obs=y, obs_mask=y_mask)
        pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)


def regression(x, u, group):
    """A regression on covariates u with a fixed effect per group; x is the (N, 1) response."""
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([u.shape[1] + 3]).to_event(1))
    with pyro.plate("data", len(x)):
        mean = (u * beta[:2]).sum(-1) + beta[2:][group]
        pyro.sample("obs", dist.Normal(mean, 0.5), obs=x[:, 0])


def build(model, example):
    return PyroModel.from_config(PyroConfig(), 2, model=model, example=example)


# ------------------------------------------------------------------- sequences
def test_sequence_model_log_likelihood_is_the_sum_over_paths():
    x = torch.randn(3, 4, D)
    batch = Batch(x=x, lengths=torch.tensor([4, 2, 3]))
    model = build(hmm, batch)
    assert model.observed_sites == tuple(f"x_{t}" for t in range(4)) and model.enumerated
    params = {"trans": torch.tensor([[0.7, 0.3], [0.2, 0.8]]), "locs": torch.tensor([[-1.0, 0.0], [1.5, 0.5]])}
    ll = model.log_likelihood(batch, params)
    for n, length in enumerate(batch.lengths.tolist()):  # brute force: every path of the sequence
        terms = []
        for path in itertools.product(range(K), repeat=length):
            lp = sum(dist.Normal(params["locs"][s], 1.0).log_prob(x[n, t]).sum() for t, s in enumerate(path))
            lp += math.log(params["trans"][0, path[0]])  # the chain starts from state 0
            lp += sum(math.log(params["trans"][a, b]) for a, b in itertools.pairwise(path))
            terms.append(lp)
        torch.testing.assert_close(ll[n], torch.logsumexp(torch.tensor(terms), 0), rtol=1e-5, atol=1e-4)
    padded = Batch(
        x=torch.where(batch.lengths[:, None, None] > torch.arange(4)[:, None], x, 7.0), lengths=batch.lengths
    )
    torch.testing.assert_close(model.log_likelihood(padded, params), ll)  # padding is masked out
    assert model.sample(5, params).shape == (5, 4, D)  # the per-step observations put together


def test_variable_length_sequences_fit_with_enumeration():
    batch, _, _ = pplvm.data.synthetic_hmm(24, 3, 6, K, D, seed=0)
    card = {"model": {"family": "pyro"}, "objective": {"name": "enum"}, "training": {"epochs": 20, "lr": 0.1}}
    card["data"] = {"source": "iris"}  # (data= replaces the source)
    run = pplvm.fit(card, data=batch, model=hmm)
    losses = [h["train_loss"] for h in run.history]
    assert losses[-1] < losses[0]
    assert run.log_likelihood(run.dataset.valid).shape == (len(run.dataset.valid),)


# ---------------------------------------------------------------------- labels
def test_partly_observed_labels_score_the_known_and_sum_out_the_rest():
    x, y = torch.randn(6, D), torch.tensor([0, -1, 1, -1, 1, 0])
    batch = Batch(x=x, y=y)
    model = build(labelled_mixture, batch)
    assert model.local_sites == ("y_unobserved",) and set(model.observed_sites) == {"y_observed", "x"}
    params = {"w": torch.tensor([0.3, 0.7]), "locs": torch.tensor([[-1.0, 0.0], [2.0, 1.0]])}
    joint = params["w"].log() + dist.Normal(params["locs"], 1.0).log_prob(x[:, None]).sum(-1)  # (N, K)
    expected = torch.where(y >= 0, joint.gather(1, y.clamp_min(0)[:, None])[:, 0], joint.logsumexp(-1))
    torch.testing.assert_close(model.log_likelihood(batch, params), expected)
    # held-out rows without labels are all missing: log p(x)
    torch.testing.assert_close(model.log_likelihood(model.prepare(x), params), joint.logsumexp(-1))


def test_labels_with_missing_entries_need_the_mask_argument():
    def no_mask(x, y):
        labelled_mixture(x, y, torch.ones(len(x), dtype=torch.bool))

    with pytest.raises(CardError, match=r"2 of 5 rows miss 'y'.*no 'y_mask' argument"):
        build(no_mask, Batch(x=torch.randn(5, D), y=torch.tensor([0, -1, 1, -1, 1])))


# ---------------------------------------------------------------- named inputs
def test_named_inputs_reach_a_regression_whose_posterior_is_least_squares():
    g = torch.Generator().manual_seed(0)
    n = 300
    u, group = torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g)
    design = torch.cat([u, torch.nn.functional.one_hot(group, 3).float()], 1)
    truth = torch.tensor([1.0, -2.0, 0.5, -0.5, 1.0])
    x = (design @ truth + 0.5 * torch.randn(n, generator=g))[:, None]
    card = {"model": {"family": "pyro"}, "guide": {"kind": "map"}, "training": {"epochs": 400, "lr": 0.05}}
    card["data"] = {"source": "iris", "valid_fraction": 0.0}
    run = pplvm.fit(card, data={"x": x, "u": u, "group": group}, model=regression)
    # MAP under a N(0, 10²) prior and noise 0.5: ridge regression with penalty (0.5/10)²
    ridge = torch.linalg.solve(design.T @ design + 0.0025 * torch.eye(5), design.T @ x[:, 0])
    torch.testing.assert_close(run.guide.median()["beta"], ridge, atol=0.02, rtol=0)


def test_inputs_the_model_does_not_take_or_lacks_are_refused():
    x, u, group = torch.randn(5, 1), torch.randn(5, 2), torch.zeros(5, dtype=torch.long)
    with pytest.raises(CardError, match=r"argument\(s\) group have no input; the data give x, u"):
        PyroModel.from_config(PyroConfig(), 1, model=regression, example=Batch(x=x, inputs={"u": u}))
    with pytest.raises(CardError, match=r"input\(s\) grp are not arguments of it \(it takes x, group, u\)"):
        PyroModel.from_config(
            PyroConfig(), 1, model=regression, example=Batch(x=x, inputs={"u": u, "group": group, "grp": group})
        )


# -------------------------------------------------- models that do not fit their data
def wider(x):
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(0.0, 1.0).expand([x.shape[1] + 1]).to_event(1), obs=x)


def positive(x):
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Gamma(2.0, 1.0).expand([x.shape[1]]).to_event(1), obs=x)


def nan_scale(x):
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(0.0, torch.tensor(float("nan"))).expand([x.shape[1]]).to_event(1), obs=x)


def covariates_from_x(x):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(beta * x[:, 0], 1.0), obs=x[:, 1])


@pytest.mark.parametrize(
    "model, message",
    [
        (
            wider,
            r"observed site 'obs': its distribution has shape \(3, 3\) but the data it observes have shape \(3, 2\)",
        ),
        (positive, r"observed site 'obs': the data lie outside the support of its Gamma"),
        (nan_scale, r"observed site 'obs': .*NaN"),
        (covariates_from_x, r"site 'obs' depends on the values of x outside the observation"),
    ],
)
def test_models_that_do_not_fit_their_data_are_refused_before_training(model, message):
    x = torch.randn(8, 2)
    with pytest.raises(CardError, match=message) as err:
        build(model, x)
    assert "\n" not in str(err.value)


def test_an_objective_refused_for_a_mixed_model_names_its_discrete_sites_only():
    """A model with a discrete and a continuous local: 'elbo' is refused for the discrete one."""
    from pplvm.guides import GuideTraits
    from pplvm.objectives import OBJECTIVES

    def mixed(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(K)))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(w))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z + c.unsqueeze(-1).float(), 1.0).to_event(1), obs=x)

    model = PyroModel.from_config(PyroConfig(), 1, model=mixed, example=torch.randn(6, 1))
    assert model.local_sites == ("c", "z") and model.discrete_sites == ("c",)
    elbo = OBJECTIVES["elbo"]
    why = elbo(elbo.Config(name="elbo")).refusal(model, GuideTraits(proposal=True))
    assert "discrete latent(s) c are summed out" in why
