"""Bayesian GMM against outside truth: scikit-learn at the same parameters, closed-form
responsibilities, a many-particle Monte-Carlo ELBO, and recovery on separated data."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture as SkGMM

import pplvm
from pplvm.data import synthetic_mixture
from pplvm.families import GaussianMixture, GMMConfig


def sklearn_gmm(weights, locs, covs, cov_type):
    """A fitted-looking sklearn GaussianMixture holding exactly these parameters."""
    sk = SkGMM(n_components=len(weights), covariance_type=cov_type)
    sk.weights_, sk.means_ = weights, locs
    sk.covariances_ = covs
    if cov_type == "full":
        sk.precisions_cholesky_ = np.stack([np.linalg.inv(np.linalg.cholesky(c)).T for c in covs])
    else:
        sk.precisions_cholesky_ = 1.0 / np.sqrt(covs)
    return sk


def as_params(weights, locs, covs, cov_type):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    if cov_type == "diag":
        return {"weights": t(weights), "locs": t(locs), "scales": t(np.sqrt(covs))}
    chol = np.linalg.cholesky(covs)
    scales = np.sqrt(np.einsum("kii->ki", covs))
    return {"weights": t(weights), "locs": t(locs), "scales": t(scales), "corr_chol": t(chol / scales[:, :, None])}


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_log_likelihood_equals_sklearn_score_samples(cov_type):
    x, _, truth = synthetic_mixture(300, 3, 4, seed=1)
    covs = truth["covariances"] if cov_type == "full" else np.einsum("kii->ki", truth["covariances"])
    sk = sklearn_gmm(truth["weights"], truth["locs"], covs, cov_type)
    model = GaussianMixture(GMMConfig(components=4, covariance=cov_type), dim=3)
    params = as_params(truth["weights"], truth["locs"], covs, cov_type)
    ours = model.log_likelihood(torch.tensor(x), params).numpy()
    ref = sk.score_samples(x)
    assert np.max(np.abs(ours - ref) / np.abs(ref)) <= 1e-6
    # responsibilities, by both the closed form and Pyro's enumeration, equal predict_proba
    resp = model.responsibilities(torch.tensor(x), params).numpy()
    np.testing.assert_allclose(resp, sk.predict_proba(x), atol=1e-8)
    marg = model.local_marginals(torch.tensor(x), params)["assignment"].numpy()
    np.testing.assert_allclose(marg, resp, atol=1e-8)
    map_z = model.map_locals(torch.tensor(x), params)["assignment"].numpy()
    np.testing.assert_array_equal(map_z, sk.predict(x))


def test_standardized_run_reports_likelihood_of_raw_data():
    """With standardize=true the model sees (x - m) / s; the run's log-likelihood must be that
    of the raw data: the model's GMM mapped back to raw units, scored by sklearn."""
    run = pplvm.Run.from_card(
        {
            "model": {"family": "gmm", "components": 3, "covariance": "full"},
            "guide": {"kind": "map"},
            "objective": {"name": "enum"},
            "data": {"source": "iris", "standardize": True},
            "training": {"epochs": 5, "progress": False},
        }
    )
    run.fit()
    p = {k: v.double() for k, v in run.params().items()}
    m, s = run.transform.loc.double().numpy(), run.transform.scale.double().numpy()
    tril = (p["scales"].unsqueeze(-1) * p["corr_chol"]).numpy()
    cov_raw = np.einsum("i,kij,j->kij", s, tril @ tril.transpose(0, 2, 1), s)
    sk = sklearn_gmm(p["weights"].numpy(), p["locs"].numpy() * s + m, cov_raw, "full")
    x_raw = run.transform.inverse(run.dataset.valid).double().numpy()
    # float32 run: log-densities of size ~1-10 carry ~1e-6 absolute rounding, which is a large
    # relative error for the values that happen to lie near 0
    np.testing.assert_allclose(run.log_likelihood(x_raw).numpy(), sk.score_samples(x_raw), rtol=1e-4, atol=1e-5)


def test_fit_recovers_means_and_matches_sklearn_held_out_likelihood():
    x, labels, truth = synthetic_mixture(3000, 2, 3, separation=6.0, seed=3)
    card = {
        "model": {"family": "gmm", "components": 3, "covariance": "full"},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.3},
        "training": {"epochs": 150, "lr": 0.05, "progress": False},
    }
    run = pplvm.Run.from_card(card, data=x)
    run.fit()
    locs = run.params()["locs"].numpy()
    cost = ((locs[:, None, :] - truth["locs"][None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    # each mean within 0.15 of the truth: with ~700 points per component of unit-ish
    # spread the standard error of a mean is ~0.04, so 0.15 is > 3 standard errors
    assert np.sqrt(cost[rows, cols]).max() < 0.15
    train = run.transform.inverse(run.dataset.train).numpy()
    valid = run.transform.inverse(run.dataset.valid).numpy()
    sk = SkGMM(3, covariance_type="full", random_state=0).fit(train)
    ours, theirs = run.log_likelihood(valid).mean().item(), sk.score(valid)
    assert abs(ours - theirs) <= 0.005 * abs(theirs)


def test_enumerated_elbo_equals_many_particle_monte_carlo_elbo():
    """TraceEnum_ELBO sums the assignments out exactly; Trace_ELBO samples them from the same
    guide. Both are the same ELBO, so the Monte-Carlo mean must agree within its standard error."""
    x = torch.tensor(synthetic_mixture(40, 2, 3, seed=4)[0], dtype=torch.float32)
    model = GaussianMixture(GMMConfig(components=3), dim=2)
    globals_guide = AutoDelta(
        poutine.block(model, expose=list(model.global_sites)),
        init_loc_fn=pyro.infer.autoguide.init_to_value(values=model.init_values(x, torch.Generator().manual_seed(0))),
    )
    logits = torch.randn(40, 3, generator=torch.Generator().manual_seed(5))

    def guide(x, num_data=None):
        globals_guide(x, num_data)
        with model.data_plate(x, num_data):
            pyro.sample("assignment", dist.Categorical(logits=logits))

    exact = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, config_enumerate(guide, "parallel"), x)
    n = 4000
    elbo = Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
    draws = _particle_elbos(elbo, model, guide, x)
    mean, se = draws.mean().item(), draws.std().item() / n**0.5
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert se > 0  # the Monte-Carlo estimate really is noisy, the comparison is not vacuous


def _particle_elbos(elbo, model, guide, x) -> torch.Tensor:
    """Per-particle ELBO values ``(num_particles,)`` from the vectorised traces Trace_ELBO builds."""
    for model_tr, guide_tr in elbo._get_traces(model, guide, (x,), {}):
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        total = 0.0
        for site in model_tr.nodes.values():
            if site["type"] == "sample":
                total = total + site["log_prob"].reshape(elbo.num_particles, -1).sum(-1)
        for site in guide_tr.nodes.values():
            if site["type"] == "sample":
                total = total - site["log_prob"].reshape(elbo.num_particles, -1).sum(-1)
        return total.detach()


def test_more_components_than_rows_is_refused():
    with pytest.raises(pplvm.DataError, match="model.components = 5"):
        pplvm.Run.from_card(
            {
                "model": {"family": "gmm", "components": 5},
                "objective": {"name": "enum"},
                "data": {"source": "file", "path": "x.npy", "valid_fraction": 0.0},
            },
            data=np.zeros((3, 2)),
        )


def test_replicate_keeps_the_parameters_fixed():
    """A posterior-predictive replicate draws new data from p(x | θ = params): with both means
    at 100 and scales 0.01 every replicate lies within 0.1 of 100 (10 sd), while the prior's
    means (Normal(0, 10)) would almost never come near."""
    model = GaussianMixture(GMMConfig(components=2), 1)
    params = {
        "weights": torch.tensor([0.5, 0.5]),
        "locs": torch.full((2, 1), 100.0),
        "scales": torch.full((2, 1), 0.01),
    }
    with pyro.poutine.seed(rng_seed=0):
        rep = model.replicate(torch.zeros(50, 1), params)
    assert rep.shape == (50, 1)
    assert (rep - 100).abs().max() < 0.1
