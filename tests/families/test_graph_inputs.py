"""Graph cards on named inputs (``kind = "input"``): a regression on covariates recovers the
least-squares coefficients, a random intercept per group (a gaussian node with ``groups``) gives
each row its own group's effect in the exact log-likelihood and, fitted, the maximum of the
closed-form marginal likelihood of the linear mixed model; bad nodes and inputs are refused in
one line naming the node and field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pplvm
from pplvm.errors import CardError, DataError

N, G = 120, 6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    u, group = rng.normal(size=(N, 2)), np.arange(N) % G
    b = rng.normal(0.0, 1.0, size=G)
    x = (0.5 + u @ [1.5, -2.0] + b[group] + 0.5 * rng.normal(size=N))[:, None]
    return {"x": x, "u": u, "group": group}


COVARIATES = [
    {"name": "u", "kind": "input", "dim": 2},
    {"name": "W", "kind": "global", "prior": "normal", "scale": 10.0, "shape": ["D", 2]},
    {"name": "b0", "kind": "param", "shape": ["D"]},
    {"name": "sigma", "kind": "param", "shape": ["D"], "init": 1.0, "positive": True},
    {"name": "obs", "kind": "observed", "mean": "b0", "weight": "W", "input": "u", "std": "sigma"},
]
#: x ~ N(b_group + W u, sigma²), b_g ~ N(b0, tau²): (1 | group) with its scale learnt
RANDOM_INTERCEPT = [
    {"name": "u", "kind": "input", "dim": 2},
    {"name": "group", "kind": "input", "size": G},
    {"name": "W", "kind": "param", "shape": ["D", 2]},
    {"name": "b0", "kind": "param", "shape": ["D"]},
    {"name": "tau", "kind": "param", "shape": [], "init": 1.0, "positive": True},
    {"name": "sigma", "kind": "param", "shape": ["D"], "init": 1.0, "positive": True},
    {"name": "b", "kind": "gaussian", "dim": 1, "groups": "group", "mean": "b0", "std": "tau"},
    {"name": "obs", "kind": "observed", "mean": "b", "weight": "W", "input": "u", "std": "sigma"},
]


def _card(nodes, guide, epochs, lr=0.05):
    return {
        "model": {"family": "graph", "nodes": nodes},
        "guide": {"kind": guide},
        "objective": {"name": "elbo"},
        "data": {"source": "iris", "valid_fraction": 0.0},
        "training": {"epochs": epochs, "lr": lr, "batch_size": N, "progress": False},
        "evaluation": {"draws": 2, "chains": 2},
    }


def test_a_regression_on_covariates_recovers_least_squares():
    """MAP of W (prior N(0, 10²), a ridge of sigma²/100 against N = 120 rows: below 1e-3) and
    b0: the least-squares coefficients of x on [1, u] within 0.02 (the optimiser's residual)."""
    data = _data()
    run = pplvm.fit(_card(COVARIATES, "map", 200), data={"x": data["x"], "u": data["u"]})
    design = np.column_stack([np.ones(N), data["u"]])
    ls, *_ = np.linalg.lstsq(design, data["x"][:, 0], rcond=None)
    with torch.no_grad():
        w = run.guide.median()["W"].numpy()
    fitted = np.concatenate([run.model.holder.module.b0.detach().numpy(), w.reshape(-1)])
    assert np.abs(fitted - ls).max() < 0.02, (fitted, ls)


def _marginal(x, u, group, b0, w, sigma, tau):
    """Closed form: Σ_g log N(x_g | b0 + U_g w, sigma² I + tau² 1 1ᵀ), the intercepts integrated out."""
    total = 0.0
    for g in range(G):
        rows = group == g
        cov = sigma**2 * np.eye(rows.sum()) + tau**2
        resid = x[rows, 0] - b0 - u[rows] @ w
        _, logdet = np.linalg.slogdet(cov)
        total += -0.5 * (resid @ np.linalg.solve(cov, resid) + logdet + rows.sum() * math.log(2 * math.pi))
    return total


def _graph(nodes, data):
    card = pplvm.card_from_dict(_card(nodes, "AutoNormal", 1))
    batch = pplvm.data.base.from_dict(data)
    return pplvm.families.GraphModel.from_config(card.model, 1, example=batch), batch


def test_each_row_takes_its_own_groups_effect_in_the_exact_log_likelihood():
    """Given the intercepts b (a global: log p(x_n | θ) is exact), each row's log-likelihood is
    log N(x_n | b[g_n] + W u_n, sigma²), for a batch of draws of b too (shape (S, N))."""
    data = _data()
    model, batch = _graph(RANDOM_INTERCEPT, data)
    assert model.global_sites == ("b",) and model.likelihood == "exact"
    batch = model.prepare(batch)
    m = model.holder.module
    with torch.no_grad():
        m.W, m.sigma = torch.tensor([[1.0, -2.0]]), torch.tensor([0.7])
    b = torch.randn(3, G, 1, generator=torch.Generator().manual_seed(0))
    got = model.log_likelihood(batch, {"b": b})
    mean = b[:, batch.inputs["group"], 0] + batch.inputs["u"] @ torch.tensor([1.0, -2.0])
    expected = torch.distributions.Normal(mean, 0.7).log_prob(batch.x[:, 0])
    assert got.shape == (3, N)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow  # 400 epochs (≈ 5 s); the exact log-likelihood above is its fast representative
def test_a_random_intercept_fit_reaches_the_closed_form_marginal_maximum():
    """q(b) = AutoNormal can equal the exact posterior of the intercepts (independent Gaussians
    given the rest), so maximising the ELBO over (W, b0, sigma, tau) maximises the marginal
    likelihood: pplvm's fitted parameters reach the closed-form maximum (scipy) within 0.1 nats
    of 120 rows (the optimiser's residual; measured 0.014), and the last epoch's one-draw ELBO is
    within 1 nat of it (its Monte-Carlo noise; measured 0.29)."""
    from scipy.optimize import minimize

    data = _data()
    x, u, group = data["x"], data["u"], data["group"]
    run = pplvm.fit(_card(RANDOM_INTERCEPT, "AutoNormal", 400), data=data)
    with torch.no_grad():
        m = run.model.holder.module
        fitted = _marginal(x, u, group, float(m.b0), m.W.double().numpy()[0], float(m.sigma), float(m.tau))

    def loss(p):
        return -_marginal(x, u, group, p[0], p[1:3], math.exp(p[3]), math.exp(p[4]))

    best = -minimize(loss, np.zeros(5), method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6}).fun
    assert best - 0.1 < fitted <= best + 1e-6
    assert abs(-run.history[-1]["train_loss"] * N - best) < 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({0: {"dim": None}}, "node 'u' (kind 'input') needs dim (covariates) or size (a group index's levels)"),
        ({7: {"mean": "u"}}, "node 'obs': mean = 'u' is an input node of covariates, which enters as input"),
        ({7: {"input": "group"}}, "node 'obs': input = 'group' is an input node of index, which enters as given"),
        ({6: {"groups": "u"}}, "node 'b': groups = 'u' is an input node of covariates"),
        ({6: {"mean": ["b0", "sigma"], "given": "group"}}, "node 'b': a grouped node (groups = 'group') is drawn"),
        ({2: {"groups": "group"}}, "node 'W': groups is for gaussian nodes (a random effect)"),
        ({7: {"mean": ["b", "nowhere"]}}, "node 'obs': mean = 'nowhere' names no node"),
    ],
)
def test_malformed_input_nodes_are_refused_naming_the_node_and_field(change, message):
    nodes = [{**n, **change.get(i, {})} for i, n in enumerate(RANDOM_INTERCEPT)]
    with pytest.raises(CardError) as err:
        _graph(nodes, _data())
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        (lambda d: {"x": d["x"], "u": d["u"]}, "node 'group' (kind 'input') needs the data's input 'group'"),
        (
            lambda d: {**d, "group": d["group"] + 1},
            "node 'group' (kind 'input'): expected one integer index per row in 0..5",
        ),
        (lambda d: {**d, "u": d["u"][:, :1]}, "node 'u' (kind 'input'): expected shape (N, 2) (dim = 2), got (120, 1)"),
        (lambda d: {**d, "v": d["u"]}, "the data's input(s) v are no node of kind 'input'"),
        (lambda d: {**d, "group": np.where(d["group"] == 0, -1, d["group"])}, "20 rows miss it (-1 or NaN)"),
    ],
)
def test_inputs_that_do_not_fit_their_nodes_are_refused(data, message):
    with pytest.raises(DataError) as err:
        pplvm.fit(_card(RANDOM_INTERCEPT, "AutoNormal", 1), data=data(_data()))
    assert message in str(err.value) and "\n" not in str(err.value)
