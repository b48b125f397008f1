"""Model comparison by PSIS-LOO: the right model wins on data it generated, runs on different
data or without a posterior are refused, and the CLI prints, plots and emits JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pplvm
from pplvm import Run
from pplvm.cli import main
from pplvm.errors import PplvmError
from pplvm.evaluation.arviz import loo_estimates
from pplvm.workflows.compare import compare_runs, load_inference_data

EVAL = {"draws": 50, "chains": 2, "max_rows": 500}


def fit_to_dir(card, run_dir, data=None):
    """Fit and write only what compare reads (inference_data.nc), to keep the test short."""
    run = Run.from_card(card, data).fit()
    run_dir.mkdir(parents=True)
    run.to_arviz(posterior_predictive=False).to_netcdf(str(run_dir / "inference_data.nc"))
    return run_dir


def gmm_card(k):
    return {
        "name": f"gmm{k}",
        "model": {"family": "gmm", "components": k},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 150, "dim": 2, "components": 3, "valid_fraction": 0.0},
        "training": {"epochs": 120, "lr": 0.05, "progress": False},
        "evaluation": EVAL,
    }


def ppca_card(k, prior="normal"):
    return {
        "name": f"ppca{k}",
        "model": {"family": "ppca", "latent_dim": k, "prior": prior},
        "guide": {"kind": "exact"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"epochs": 150, "lr": 0.05, "progress": False},
        "evaluation": EVAL,
    }


def rank3_data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 3)) * np.array([3.0, 2.0, 1.5])
    return rng.normal(size=(n, 3)) @ w.T + 0.5 * rng.normal(size=(n, 6))


@pytest.fixture(scope="module")
def gmm_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmm")
    return {k: fit_to_dir(gmm_card(k), root / f"k{k}") for k in (1, 3)}


def test_gmm_with_three_components_wins_on_three_cluster_data(gmm_runs):
    result = compare_runs([gmm_runs[1], gmm_runs[3]], names=["K=1", "K=3"])
    rows = result.rows()
    assert [r["run"] for r in rows] == ["K=3", "K=1"]
    # the margin is hundreds of nats, many standard errors of the difference
    assert rows[1]["elpd_diff"] > 5 * rows[1]["dse"]
    assert result.n == 150


def test_ppca_with_three_factors_wins_on_rank_three_data(tmp_path):
    x = rank3_data()
    runs = [fit_to_dir(ppca_card(k), tmp_path / f"k{k}", x) for k in (1, 3)]
    rows = compare_runs(runs, names=["k=1", "k=3"]).rows()
    assert [r["run"] for r in rows] == ["k=3", "k=1"]
    assert rows[1]["elpd_diff"] > 5 * rows[1]["dse"]


def test_runs_on_different_data_are_refused(gmm_runs, tmp_path):
    other = gmm_card(3)
    other["data"] = {**other["data"], "seed": 1}  # another draw of the synthetic mixture
    d = fit_to_dir({**other, "training": {**other["training"], "epochs": 2}}, tmp_path / "other")
    with pytest.raises(PplvmError, match=r"runs were scored on different data: .* differ in \d+ of 150 rows"):
        compare_runs([gmm_runs[3], d])
    ppca = fit_to_dir({**ppca_card(1), "training": {"epochs": 2, "progress": False}}, tmp_path / "p", rank3_data())
    with pytest.raises(PplvmError, match=r"has observations of shape \(150, 2\), .* has \(150, 6\)"):
        compare_runs([gmm_runs[3], ppca])


def test_point_estimates_and_single_runs_are_refused(tmp_path):
    x = rank3_data()
    ml = [
        fit_to_dir({**ppca_card(k, prior="none"), "training": {"epochs": 2, "progress": False}}, tmp_path / f"ml{k}", x)
        for k in (1, 2)
    ]
    # no global latents (ML PPCA): LOO has no draws to reweight; the refusal says so and what scores them
    with pytest.raises(PplvmError, match=r"has no global latents .* in-sample .*pplvm evaluate RUN --split test"):
        compare_runs(ml)
    with pytest.raises(PplvmError, match="the run has no global latents"):
        loo_estimates(load_inference_data(ml[0]))
    with pytest.raises(PplvmError, match="at least two runs"):
        compare_runs(ml[:1])
    with pytest.raises(pplvm.RunDirError, match="no inference_data.nc"):
        compare_runs([tmp_path, ml[0]])


def test_cli_compare_prints_json_and_writes_the_plot(gmm_runs, tmp_path, capsys):
    plot = tmp_path / "cmp.png"
    assert main(["compare", str(gmm_runs[1]), str(gmm_runs[3]), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "pplvm.compare/1" and out["n"] == 150
    assert [r["run"] for r in out["runs"]] == [str(gmm_runs[3]), str(gmm_runs[1])]
    assert plot.stat().st_size > 0
    assert main(["compare", str(gmm_runs[1]), str(gmm_runs[3]), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "PSIS-LOO comparison on the same 150 observations" in text and str(gmm_runs[3]) in text.splitlines()[2]
    assert main(["compare", str(gmm_runs[1])]) == 2
    assert "at least two runs" in capsys.readouterr().err
