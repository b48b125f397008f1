"""Objective ``em``: exact EM against outside truth (scikit-learn's GaussianMixture, PCA and
FactorAnalysis, hmmlearn's Baum–Welch, from the same start), monotone in its objective, and a
run like any other (save, resume == uninterrupted, load, evaluate, summary labels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pplvm
from pplvm.data import Batch, synthetic_hmm, synthetic_mixture
from pplvm.errors import IncompatibleError
from pplvm.families import FAMILIES
from pplvm.guides import make_guide
from pplvm.objectives import EMStep


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def em_fit(family, config, x, iterations, estimate="ml", *, batch=None, seed=0):
    """``iterations`` EM steps of the rule on ``x`` (full batch unless ``batch``); returns the
    rule and the loss of each step (the negative objective at the parameters it started from)."""
    model = FAMILIES[family](
        FAMILIES[family].Config(family=family, **config), x.x.shape[-1] if isinstance(x, Batch) else x.shape[-1]
    )
    guide = make_guide(model, "map", x, generator=torch.Generator().manual_seed(seed))
    rule = EMStep(model, guide, estimate=estimate)
    rule.setup(x, len(x))
    losses = []
    for i in range(iterations):
        rows = slice(None) if batch is None else slice((i * batch) % len(x), (i * batch) % len(x) + batch)
        losses.append(float(rule.step(x[rows], len(x), 0.0)))
    return rule, losses


def objective(rule, x):
    """The full-data objective at the rule's current parameters (what the next step's loss is)."""
    return float(rule.held_out_loss(x, len(x)))


# ---------------------------------------------------------------- monotone in the objective
MONOTONE = [
    (
        "gmm",
        {
            "components": 4,
            "covariance": "diag",
            "loc_scale": 1.0,
            "scale_log_sd": 0.5,
            "weight_concentration": 3.0,
            "init": "random",
        },
        "map",
    ),
    ("gmm", {"components": 4, "covariance": "full", "init": "random"}, "ml"),
    (
        "hmm",
        {
            "states": 3,
            "loc_scale": 1.0,
            "scale_log_sd": 0.5,
            "stickiness": 5.0,
            "transition_concentration": 2.0,
            "init": "random",
        },
        "map",
    ),
    (
        "hmm",
        {"states": 3, "emission": "categorical", "categories": 4, "emission_concentration": 2.0, "init": "random"},
        "map",
    ),
    ("hmm", {"states": 3, "emission": "bernoulli", "emission_concentration": 1.5, "init": "random"}, "map"),
    ("ppca", {"latent_dim": 2, "init": "random"}, "ml"),
    ("fa", {"latent_dim": 2, "prior": "normal", "weight_scale": 0.3, "init": "random"}, "map"),
]


def data_for(family, config, seed=0):
    if family == "hmm":
        emission = config.get("emission", "gaussian")
        x, _, _ = synthetic_hmm(20, 30, 50, 3, 3, emission=emission, separation=1.0, seed=seed)
        return x
    x, _, _ = synthetic_mixture(400, 5, 4, separation=1.5, seed=seed)
    return torch.as_tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("family, config, estimate", MONOTONE, ids=lambda v: str(v)[:40])
def test_full_batch_em_never_decreases_its_objective(float64, family, config, estimate):
    x = data_for(family, config)
    rule, losses = em_fit(family, config, x, 25, estimate)
    losses.append(objective(rule, x))
    steps = np.diff(losses)
    # float64: a step's objective is a sum of ~10^3 log-densities, each rounded at ~1e-16
    # relative, so "never decreases" is checked to 1e-10 of the objective's size
    assert (steps <= 1e-10 * abs(losses[0])).all(), steps.max()
    assert losses[-1] < losses[0]  # and it moved


# ---------------------------------------------------------------- equal to the peers
def test_gmm_em_equals_sklearn_from_the_same_start(float64):
    from sklearn.mixture import GaussianMixture

    x, _, _ = synthetic_mixture(600, 3, 3, separation=2.0, seed=1)
    x = torch.as_tensor(x, dtype=torch.float64)
    config = {"components": 3, "covariance": "full"}
    rule, _ = em_fit("gmm", config, x, 0)
    start = rule.params()

    def cov(p):
        return (p["scales"].unsqueeze(-1) * p["corr_chol"]) @ (p["scales"].unsqueeze(-1) * p["corr_chol"]).mT

    sk = GaussianMixture(
        3,
        covariance_type="full",
        reg_covar=1e-6,  # both defaults
        tol=0.0,
        max_iter=40,
        weights_init=start["weights"].numpy(),
        means_init=start["locs"].numpy(),
        precisions_init=np.linalg.inv(cov(start).numpy()),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol = 0 runs all 40 iterations
        sk.fit(x.numpy())
    rule, _ = em_fit("gmm", config, x, 40)
    p = rule.params()
    # the same deterministic iteration in float64: agreement to rounding, amplified over 40
    # iterations (scikit-learn adds 10 eps to each count; pplvm jitters Σ by 10 eps)
    np.testing.assert_allclose(p["weights"].numpy(), sk.weights_, rtol=1e-8)
    np.testing.assert_allclose(p["locs"].numpy(), sk.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cov(p).numpy(), sk.covariances_, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("estimate", ["ml", "map"])
def test_hmm_em_equals_hmmlearn_from_the_same_start(float64, estimate):
    from hmmlearn.hmm import GaussianHMM

    x, _, _ = synthetic_hmm(8, 40, 80, 3, 2, separation=1.5, seed=2)
    # hmmlearn's MAP: Dirichlet priors on π and A rows. pplvm's emission priors are made flat
    # (loc_scale, scale_log_sd huge) but for the LogNormal density's 1/σ, which makes the σ²
    # mode S / (n + 1): hmmlearn's with covars_prior = 0, covars_weight = 2
    config = {
        "states": 3,
        "initial_concentration": 2.0,
        "transition_concentration": 1.5,
        "stickiness": 3.0,
        "loc_scale": 1e8,
        "scale_log_sd": 1e8,
    }
    rule, _ = em_fit("hmm", config, x, 0, estimate)
    start = rule.params()
    mask = torch.arange(x.x.shape[1]) < x.lengths[:, None]
    flat = x.x[mask].numpy()
    map_ = estimate == "map"
    hl = GaussianHMM(
        3,
        covariance_type="diag",
        n_iter=30,
        tol=-np.inf,
        init_params="",
        params="stmc",
        covars_prior=0.0,
        covars_weight=2.0 if estimate == "map" else 1.0,
        min_covar=0.0,
        startprob_prior=2.0 if map_ else 1.0,
        transmat_prior=(1.5 + 3.0 * np.eye(3)) if map_ else 1.0,
    )
    hl.startprob_ = start["initial"].numpy()
    hl.transmat_ = start["transition"].numpy()
    hl.means_ = start["locs"].numpy()
    hl.covars_ = start["scales"].pow(2).numpy()
    hl.fit(flat, x.lengths.numpy())
    rule, _ = em_fit("hmm", config, x, 30, estimate)
    p = rule.params()
    # same iteration, float64; the huge-but-finite emission priors shift σ by ~n/s² ~ 1e-14
    np.testing.assert_allclose(p["initial"].numpy(), hl.startprob_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p["transition"].numpy(), hl.transmat_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p["locs"].numpy(), hl.means_, rtol=1e-6)
    np.testing.assert_allclose(p["scales"].pow(2).numpy(), np.stack([np.diag(c) for c in hl.covars_]), rtol=1e-6)


def test_ppca_and_fa_em_reach_sklearn_fixed_points(float64):
    from sklearn.decomposition import PCA, FactorAnalysis

    g = torch.Generator().manual_seed(3)
    w = 2 * torch.randn(6, 2, generator=g)
    noise = 0.5 + 0.5 * torch.rand(6, generator=g)
    x = torch.randn(1000, 2, generator=g) @ w.T + noise * torch.randn(1000, 6, generator=g) + 1.0
    n = len(x)
    # full-batch EM's statistics are the data's moments (see LinearGaussian.expected_statistics),
    # so iterating the M-step on them is iterating EM (the rule is exercised by the tests above)
    for family, iterations in (("ppca", 1000), ("fa", 2000)):
        model = FAMILIES[family](FAMILIES[family].Config(family=family, latent_dim=2, init="random"), 6)
        stats = model.expected_statistics(x, {})
        for _ in range(iterations):
            model.maximize(stats, {}, "ml")
        ours = model.marginal({}).covariance_matrix.squeeze(0).detach().numpy()
        np.testing.assert_allclose(model.loc.detach().numpy(), x.mean(0).numpy(), rtol=1e-12)
        if family == "ppca":
            # scikit-learn's PCA covariance uses the (N - 1) sample covariance; PPCA's ML uses 1/N
            np.testing.assert_allclose(ours, PCA(2).fit(x.numpy()).get_covariance() * (n - 1) / n, rtol=1e-6, atol=1e-8)
        else:
            fa = FactorAnalysis(2, tol=1e-12, max_iter=10_000, svd_method="lapack").fit(x.numpy())
            # EM converges linearly (PPCA at the rate of the eigenvalue gaps, FA slower): after
            # these iterations both sit at the ML point to ~1e-7
            np.testing.assert_allclose(ours, fa.get_covariance(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(model.noise_scale().detach().pow(2).numpy(), fa.noise_variance_, rtol=1e-4)


# ---------------------------------------------------------------- stepwise EM
def test_stepwise_em_approaches_the_full_batch_fixed_point(float64):
    x, _, _ = synthetic_mixture(4000, 2, 3, separation=4.0, seed=4)
    x = torch.as_tensor(x, dtype=torch.float64)[torch.randperm(4000, generator=torch.Generator().manual_seed(0))]
    config = {"components": 3, "covariance": "diag"}
    full, _ = em_fit("gmm", config, x, 100)
    online, _ = em_fit("gmm", config, x, 400, batch=200)
    # 400 minibatch steps (20 passes) with step sizes k^-0.6: the held-out objective per datum
    # is within 1e-3 nats of full-batch EM's fixed point (stepwise EM's noise is O(ρ_k))
    assert objective(online, x) / len(x) == pytest.approx(objective(full, x) / len(x), abs=1e-3)


# ---------------------------------------------------------------- a run like any other
CARD = {
    "name": "em",
    "model": {"family": "hmm", "states": 3},
    "guide": {"kind": "map"},
    "objective": {"name": "em"},
    "data": {"source": "synthetic_hmm", "n": 30, "min_length": 20, "max_length": 40, "states": 3, "dim": 2},
    "training": {"epochs": 4, "batch_size": 10, "progress": False, "checkpoint_every": 1},
    "evaluation": {"draws": 2, "chains": 1, "max_rows": 5},
}


class Interrupt(Exception):
    pass


def test_em_run_resumes_exactly_and_loads(tmp_path):
    full = pplvm.fit(CARD, tmp_path / "full")

    def crash(trainer, metrics):
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        pplvm.Run.from_card(CARD).fit(tmp_path / "cut", callbacks=[crash])
    resumed = pplvm.Run.resume(tmp_path / "cut")
    for k, v in full.guide.state_dict().items():
        torch.testing.assert_close(resumed.guide.state_dict()[k], v, rtol=0, atol=0)
    assert resumed.history == full.history
    loaded = pplvm.load(tmp_path / "full")
    x = full.dataset.valid
    torch.testing.assert_close(loaded.log_likelihood(x), full.log_likelihood(x))
    assert loaded.sample(2, seed=0).shape[0] == 2
    text = (tmp_path / "full" / "summary.txt").read_text()
    assert "point estimate of the global latents (EM, maximum a posteriori)" in text


def test_em_refuses_what_it_cannot_fit():
    with pytest.raises(IncompatibleError, match="guide.kind = 'map'"):
        pplvm.Run.from_card({**CARD, "guide": {"kind": "meanfield"}})
    gmm = {
        **CARD,
        "model": {"family": "gmm", "components": 2, "covariance": "full"},
        "data": {"source": "synthetic_gmm", "n": 50, "dim": 2, "components": 2},
    }
    with pytest.raises(IncompatibleError, match="objective.em_estimate = 'map'"):
        pplvm.Run.from_card({**gmm, "objective": {"name": "em", "em_estimate": "map"}})
    # left at "auto", the estimate is the one the model has in closed form, and the card records it
    assert pplvm.Run.from_card(gmm).card.objective.em_estimate == "ml"


def test_full_covariance_em_regularises_a_collapsing_component_as_sklearn_does():
    """K = 10 on iris (duplicate rows): within three EM steps a component holds 2 rows in 4
    dimensions, whose covariance is singular. reg_covar (default 1e-6) keeps it positive
    definite; without it, the fit stops with one line instead of a Cholesky traceback."""
    card = {
        "name": "collapse",
        "model": {"family": "gmm", "components": 10, "covariance": "full"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
        "data": {"source": "iris", "valid_fraction": 0.0, "test_fraction": 0.0},
        "training": {"epochs": 5, "progress": False},
    }
    run = pplvm.fit(card)
    losses = [m["train_loss"] for m in run.history]
    assert len(losses) == 5 and np.isfinite(losses).all() and losses[-1] < losses[0]
    with pytest.raises(pplvm.TrainingError, match=r"^model.reg_covar = 0: component \d+'s covariance is singular"):
        pplvm.fit(card, overrides=["model.reg_covar=0"])
