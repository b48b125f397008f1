"""Simulation-based calibration: the rank machinery on an exact conjugate posterior, then the
whole pipeline (simulate from the prior, fit, draw from the guide) for GMM means and Bayesian
PPCA, each also shown to reject a deliberately miscalibrated posterior.

Every run is seeded, so each p-value is a fixed number, not a coin flip: measured values are
written beside the assertions. The thresholds are the usual 0.01 for "no evidence against
calibration" and 1e-3 for "detected" (both Bonferroni-corrected over the scalar tests)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from pplvm.cli import main
from pplvm.errors import IncompatibleError, PplvmError
from pplvm.workflows.sbc import SBCResult, default_bins, rank_histogram_plot, run_sbc


def conjugate_normal(sims=200, num_draws=99, n=5, seed=0):
    """θ ~ N(0, 1), y_i ~ N(θ, 1): posterior N(Σy / (n + 1), 1 / (n + 1)), drawn exactly."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(sims, 1))
    y = theta + rng.normal(size=(sims, n))
    mean, sd = y.sum(1, keepdims=True) / (n + 1), (n + 1) ** -0.5
    draws = mean[:, None, :] + sd * rng.normal(size=(sims, num_draws, 1))
    return SBCResult({"theta": theta}, {"theta": draws}, "conjugate", n, "globals")


def test_ranks_count_draws_below_the_truth():
    r = SBCResult(
        {"a": np.array([[0.5], [3.0]])},
        {"a": np.array([[[0.0], [1.0], [0.2]], [[1.0], [2.0], [5.0]]])},
        "t",
        1,
        "globals",
    )
    assert r.ranks()["a"].tolist() == [[2], [2]]
    assert default_bins(99, 20) == 4 and default_bins(99, 50) == 10 and default_bins(99, 4) == 2


def test_exact_posterior_passes_and_bent_posteriors_fail():
    exact = conjugate_normal()
    assert exact.uniformity()["p_value"] > 0.05  # measured 1.0
    assert exact.miscalibrated(scale=0.5).uniformity()["p_value"] < 1e-6  # overconfident
    assert exact.miscalibrated(scale=2.0).uniformity()["p_value"] < 1e-3  # underconfident
    assert exact.miscalibrated(shift=0.5).uniformity()["p_value"] < 1e-3  # biased


GMM_CARD = {
    "name": "sbc_gmm",
    "model": {
        "family": "gmm",
        "components": 2,
        "dim": 1,
        "loc_scale": 10.0,
        "scale_log_sd": 0.3,
        "weight_concentration": 5.0,
    },
    "guide": {"kind": "meanfield"},
    "objective": {"name": "enum"},
    "data": {"source": "iris"},
    "training": {"epochs": 60, "lr": 0.1, "progress": False},
}
PPCA_CARD = {
    "name": "sbc_ppca",
    "model": {"family": "ppca", "latent_dim": 1, "dim": 3, "prior": "normal", "weight_scale": 2.0},
    "guide": {"kind": "exact"},
    "data": {"source": "iris"},
    "training": {"epochs": 60, "lr": 0.1, "progress": False},
}


# each calibration run is computed once per process (a cache, not a module fixture: pytest-xdist
# may tear a module's fixtures down between its tests) and read, never changed, by the tests
@functools.cache
def _gmm_sbc():
    # 20 simulations of 100 rows; components ordered by mean (label switching), mean-field guide
    return run_sbc(GMM_CARD, 20, rows=100, num_draws=99, seed=0)


@functools.cache
def _ppca_sbc():
    # 20 simulations of 100 rows; diag(W Wᵀ) is invariant to W's sign (rotation) symmetry
    return run_sbc(PPCA_CARD, 20, rows=100, num_draws=99, seed=0)


@pytest.fixture
def gmm_sbc():
    return _gmm_sbc()


@pytest.fixture
def ppca_sbc():
    return _ppca_sbc()


def test_gmm_means_are_calibrated_and_miscalibration_is_detected(gmm_sbc):
    assert gmm_sbc.statistics == "identified" and gmm_sbc.truth["locs"].shape == (20, 2)
    assert gmm_sbc.uniformity(["locs"])["p_value"] > 0.01
    assert gmm_sbc.miscalibrated(scale=0.2).uniformity(["locs"])["p_value"] < 1e-3
    assert gmm_sbc.miscalibrated(shift=1.5).uniformity(["locs"])["p_value"] < 1e-3
    # the rank histograms of the same run (in this test: another worker would recompute the run)
    fig = rank_histogram_plot(gmm_sbc, ["locs"])
    assert len(fig.axes) == 2


def test_bayesian_ppca_is_calibrated_and_miscalibration_is_detected(ppca_sbc):
    assert set(ppca_sbc.truth) == {"signal_variance"} and ppca_sbc.draws["signal_variance"].shape == (20, 99, 3)
    assert ppca_sbc.uniformity()["p_value"] > 0.01
    assert ppca_sbc.miscalibrated(scale=0.2).uniformity()["p_value"] < 1e-3
    assert ppca_sbc.miscalibrated(shift=1.5).uniformity()["p_value"] < 1e-3


def test_nothing_to_calibrate_is_an_error():
    ml = {**PPCA_CARD, "model": {**PPCA_CARD["model"], "prior": "none"}}
    with pytest.raises(IncompatibleError, match="no global latent variables .* set model.prior = 'normal'"):
        run_sbc(ml, 2, rows=20)
    point = {**GMM_CARD, "guide": {"kind": "map"}, "training": {**GMM_CARD["training"], "epochs": 1}}
    with pytest.raises(IncompatibleError, match="gives point estimates"):
        run_sbc(point, 2, rows=20, num_draws=5)
    no_dim = {**GMM_CARD, "model": {k: v for k, v in GMM_CARD["model"].items() if k != "dim"}}
    with pytest.raises(PplvmError, match="the card must set model.dim"):
        run_sbc(no_dim, 2)
    with pytest.raises(PplvmError, match="at least 2 simulations"):
        run_sbc(GMM_CARD, 1)


def test_cli_sbc(tmp_path, capsys):
    import tomli_w

    card = tmp_path / "card.toml"
    card.write_bytes(tomli_w.dumps({**GMM_CARD, "training": {**GMM_CARD["training"], "epochs": 5}}).encode())
    plot = tmp_path / "ranks.png"
    assert (
        main(
            [
                "sbc",
                str(card),
                "--sims",
                "3",
                "--rows",
                "30",
                "--draws",
                "9",
                "--statistic",
                "locs",
                "--plot",
                str(plot),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "pplvm.sbc/1" and out["sims"] == 3 and {t["statistic"] for t in out["tests"]} == {"locs"}
    assert 0 <= out["p_value"] <= 1 and plot.stat().st_size > 0
    assert main(["sbc", str(card), "--sims", "2", "--set", "guide.kind=map", "--draws", "3"]) == 2
    assert "point estimates" in capsys.readouterr().err


def test_sbc_of_a_users_model():
    """SBC simulates from a user's Pyro model (``model.family = "pyro"``) as from a family: 10
    simulations of 50 rows, mean-field guide; its globals are the statistics, ranks in 0..L,
    no evidence against calibration (measured p = 1.0 with seed 0)."""
    card = {
        "model": {"family": "pyro", "target": "user_models:calibration_normal", "dim": 1},
        "guide": {"kind": "meanfield"},
        "data": {"source": "iris"},
        "training": {"epochs": 60, "lr": 0.1, "progress": False},
    }
    result = run_sbc(card, 10, rows=50, num_draws=99, seed=0)
    ranks = result.ranks()
    assert set(ranks) == {"mu", "sigma"} and result.statistics == "globals"
    assert all(((r >= 0) & (r <= 99)).all() for r in ranks.values())
    assert result.uniformity()["p_value"] > 0.01
