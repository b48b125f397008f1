"""The arviz export after a fit: as many draws as the guide can say apart (one for a point
estimate), skipped with ``evaluation.export = false``, written later by ``pplvm export RUN``."""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pyro
import pytest
import torch
from torch.distributions import constraints, transform_to

import pplvm
from pplvm.cli import main
from pplvm.evaluation import plots
from pplvm.evaluation.arviz import groups, read_inference_data
from pplvm.training.checkpoint import load_checkpoint

#: a tiny 3-state Bernoulli HMM (the issue's polyphonic-music model, shrunk), MAP guide
HMM_MAP = {
    "name": "hmm_map",
    "model": {"family": "hmm", "states": 3, "emission": "bernoulli", "sample_length": 8},
    "guide": {"kind": "map"},
    "objective": {"name": "enum"},
    "data": {
        "source": "synthetic_hmm",
        "n": 12,
        "min_length": 4,
        "max_length": 8,
        "states": 3,
        "dim": 5,
        "emission": "bernoulli",
        "valid_fraction": 0.0,
    },
    "training": {"epochs": 3, "lr": 0.05, "progress": False, "compile": "off"},
    "evaluation": {"draws": 7, "chains": 3},
}
#: a guide with spread (several draws exported) on a tiny mixture
GMM_MEANFIELD = {
    "name": "gmm_mf",
    "model": {"family": "gmm", "components": 2},
    "guide": {"kind": "meanfield"},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 40, "dim": 2, "components": 2, "valid_fraction": 0.0},
    "training": {"epochs": 2, "progress": False, "compile": "off"},
    "evaluation": {"draws": 3, "chains": 2, "max_rows": 25},
}
#: each site's support: how the checkpoint's unconstrained AutoDelta values map to the parameters
SUPPORT = {
    "initial": constraints.simplex,
    "transition": constraints.simplex,
    "emission_probs": constraints.unit_interval,
}


def without_export(card: dict) -> dict:
    return {**card, "evaluation": {**card["evaluation"], "export": False}}


@contextlib.contextmanager
def no_png():
    """Figures built but not rendered to PNG (what these tests check is not in them; a second)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plots, "save_figure", lambda fig, path: None)
        yield


@pytest.fixture(scope="module")
def hmm_runs(tmp_path_factory):
    """The tiny MAP HMM fitted twice: ``on`` (the export written after the fit, figures
    rendered) and ``off`` (``evaluation.export = false``); and the ``off`` run."""
    d = tmp_path_factory.mktemp("hmm")
    pyro.set_rng_seed(0)
    pplvm.fit(HMM_MAP, d / "on")
    with no_png():
        run = pplvm.fit(without_export(HMM_MAP), d / "off")
    return d / "on", d / "off", run


def same_inference_data(a, b) -> None:
    """The same groups, variables and values (bit for bit)."""
    assert groups(a) == groups(b) >= {"posterior", "log_likelihood", "posterior_predictive", "observed_data"}
    for group in groups(b):
        x, y = getattr(a, group), getattr(b, group)
        assert set(x.data_vars) == set(y.data_vars), group
        for name in y.data_vars:
            np.testing.assert_array_equal(np.asarray(x[name]), np.asarray(y[name]), err_msg=f"{group}.{name}")


def test_a_map_fit_exports_one_draw_of_the_fitted_parameters(hmm_runs):
    on, _, _ = hmm_runs
    idata = read_inference_data(on / "inference_data.nc")
    guide = load_checkpoint(on / "checkpoint.pt")["guide"]
    for site, support in SUPPORT.items():
        exported = torch.as_tensor(np.asarray(idata.posterior[site]))
        fitted = transform_to(support)(guide[f"{site}_unconstrained"])  # the oracle: the checkpoint's values
        assert exported.shape == (1, 1, *fitted.shape)  # one chain, one draw (not 3 x 7 copies)
        torch.testing.assert_close(exported[0, 0], fitted)
    # log p(x_n | θ̂) of each exported sequence: the loaded run's own log-likelihood of those rows
    ll = torch.as_tensor(np.asarray(idata.log_likelihood["obs"]))
    observed = torch.as_tensor(np.asarray(idata.observed_data["obs"]))
    lengths = (~observed.isnan().any(-1)).sum(-1)
    rows = pplvm.data.Batch(observed.nan_to_num(0.0), lengths=lengths)
    assert ll.shape == (1, 1, 12) and idata.posterior_predictive["obs"].shape[:2] == (1, 1)
    torch.testing.assert_close(ll[0, 0], pplvm.load(on).log_likelihood(rows).to(ll.dtype))


def test_export_false_writes_none_and_pplvm_export_writes_what_the_fit_would_have(hmm_runs, tmp_path, capsys):
    on, off, _ = hmm_runs
    assert not (off / "inference_data.nc").exists()
    assert "emission_probs" in (off / "summary.txt").read_text()  # the summary is still written
    shutil.copytree(off, tmp_path / "later")
    assert main(["export", str(tmp_path / "later")]) == 0
    assert (
        capsys.readouterr().out
        == f"wrote {tmp_path / 'later' / 'inference_data.nc'} (1 chain(s) x 1 draw(s) of the guide)\n"
    )
    same_inference_data(
        read_inference_data(tmp_path / "later" / "inference_data.nc"), read_inference_data(on / "inference_data.nc")
    )


def test_pplvm_export_of_a_guide_with_spread_draws_what_the_fit_draws(tmp_path):
    """meanfield: 2 chains x 3 draws of the globals, each draw's log-likelihoods and replicates."""
    with no_png():
        pplvm.fit(without_export(GMM_MEANFIELD), tmp_path / "off")
        assert main(["export", str(tmp_path / "off"), "--quiet"]) == 0
        pplvm.fit(GMM_MEANFIELD, tmp_path / "on")
    later = read_inference_data(tmp_path / "off" / "inference_data.nc")
    assert later.posterior["locs"].shape[:2] == (2, 3)
    same_inference_data(later, read_inference_data(tmp_path / "on" / "inference_data.nc"))


def test_compare_on_a_run_without_its_export_says_one_line(hmm_runs, tmp_path, capsys):
    _, off, _ = hmm_runs
    shutil.copytree(off, tmp_path / "s")
    assert main(["compare", str(off), str(tmp_path / "s"), "--plot", str(tmp_path / "c.png")]) == 2
    out, err = capsys.readouterr()
    assert err == f"pplvm: error: {str(off)!r} has no inference_data.nc; write it with: pplvm export {off}\n"
    assert out == ""


def test_a_point_estimate_summary_is_its_values(hmm_runs):
    """The summary table of a one-draw export: each entry's value, labelled as arviz labels it."""
    run = hmm_runs[2]
    posterior = run.summary()["posterior"]
    params = run.params()
    assert posterior["emission_probs[2, 4]"] == {"mean": pytest.approx(float(params["emission_probs"][2, 4]), abs=1e-4)}
    assert len(posterior) == sum(v.numel() for v in params.values())
