"""arviz export: the groups a user expects, per-draw log-likelihoods equal to a direct
computation, and az.summary / az.loo working on the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pplvm
from pplvm.evaluation.arviz import arviz, groups, loo_estimates

az = arviz()


@pytest.fixture(scope="module")
def fitted():
    run = pplvm.Run.from_card(
        {
            "model": {"family": "gmm", "components": 2},
            "objective": {"name": "enum"},
            "data": {"source": "synthetic_gmm", "n": 1000, "components": 2, "separation": 6.0, "valid_fraction": 0.5},
            "training": {"epochs": 30, "lr": 0.05, "progress": False},
            # max_rows: the exports take a random 100 of the 500 training rows (every test here)
            "evaluation": {"draws": 50, "chains": 4, "max_rows": 100},
        }
    )
    return run.fit()


def test_groups_shapes_and_values(fitted):
    idata = fitted.to_arviz(seed=7)
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= groups(idata)
    assert idata.posterior["locs"].shape == (4, 50, 2, 2)
    assert idata.posterior["locs"].dims == ("chain", "draw", "component", "feature")
    n = 100  # evaluation.max_rows: a random subset of the 500 training rows
    assert idata.log_likelihood["obs"].shape == (4, 50, n)
    assert idata.posterior_predictive["obs"].shape == (4, 50, n, 2)
    observed = torch.as_tensor(idata.observed_data["obs"].values, dtype=torch.float32)
    assert (
        torch.cdist(observed, fitted.dataset.train, compute_mode="donot_use_mm_for_euclid_dist").min(-1).values == 0
    ).all()
    # the stored log-likelihood of draw (c, d) is log p(x | θ_cd) computed directly
    post = idata.posterior
    for c, d in [(0, 0), (3, 49)]:
        params = {k: torch.as_tensor(post[k].values[c, d]) for k in fitted.model.global_sites}
        direct = fitted.model.log_likelihood(observed, params).numpy()
        np.testing.assert_allclose(idata.log_likelihood["obs"].values[c, d], direct, rtol=1e-5)


# 200 draws leave a few Pareto k above arviz's 0.57 threshold; the estimate is checked below
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto distribution")
def test_summary_and_loo(fitted):
    idata = fitted.to_arviz(posterior_predictive=False)
    table = az.summary(idata, var_names=["weights", "locs"])
    assert table["r_hat"].max() < 1.05  # independent guide draws
    loo = loo_estimates(idata)  # az.loo, named alike on arviz 0.x and 1.x
    # LOO estimates out-of-sample predictive density: per datum it must agree with the exact
    # log-likelihood on the 500 held-out rows (standard error of that mean ≈ 0.06 nats)
    n = idata.log_likelihood["obs"].shape[-1]
    held_out = fitted.log_likelihood(fitted.transform.inverse(fitted.dataset.valid)).mean().item()
    assert abs(loo["elpd_loo"] / n - held_out) < 0.2
    assert 0 < loo["p_loo"] < 20  # about the number of free parameters (9), not more
