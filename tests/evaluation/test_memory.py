"""Memory-bounded evaluation (pplvm.evaluation.memory): results computed in chunks of draws
and rows equal those computed in one pass, and the arviz export of a polyphonic-music-sized
sequence set (229 sequences of up to 160 steps, 51 binary notes, a 16-state Bernoulli HMM)
stays within ``evaluation.memory_mb`` — the unchunked export would need gigabytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pplvm
from pplvm.evaluation import memory
from pplvm.evaluation.arviz import groups


def with_memory(run, mb):
    run.card = pplvm.card_from_dict(pplvm.card_to_dict(run.card), {"evaluation.memory_mb": mb})
    return run


def test_plan_fits_the_budget():
    for draws, rows, cost, mb in [(400, 229, 160 * 16 * 67, 512), (400, 10**6, 12, 64), (3, 5, 10**9, 1)]:
        d, r = memory.plan(draws, rows, cost, mb)
        assert 1 <= d <= draws and 1 <= r <= rows
        assert d * r * cost <= memory.budget_elements(mb) or d == r == 1  # one pair always runs
    assert list(memory.spans(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]


@pytest.fixture(scope="module")
def hmm_run():
    card = {
        "model": {"family": "hmm", "states": 3, "emission": "bernoulli"},
        "objective": {"name": "enum"},
        "data": {
            "source": "synthetic_hmm",
            "n": 12,
            "min_length": 5,
            "max_length": 20,
            "states": 3,
            "dim": 4,
            "emission": "bernoulli",
        },
        "training": {"epochs": 3, "progress": False},
        "evaluation": {"draws": 6, "chains": 2},
    }
    return pplvm.fit(card)


@pytest.fixture(scope="module")
def gmm_run():
    card = {
        "model": {"family": "gmm", "components": 3, "covariance": "full"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 60, "dim": 2, "components": 3},
        "training": {"epochs": 3, "progress": False},
        "evaluation": {"draws": 5, "chains": 2},
    }
    return pplvm.fit(card)


@pytest.mark.parametrize("name", ["hmm_run", "gmm_run"])
def test_chunked_equals_one_pass(name, request):
    run = request.getfixturevalue(name)
    x = run.transform.inverse(run.dataset.train)
    whole = with_memory(run, 10**6)
    ll, idata = whole.log_likelihood(x), whole.to_arviz(posterior_predictive=False)
    post, path = whole.posterior(x), whole.map_states(x)
    cost = run.model.evaluation_cost(run.dataset.train)
    mb = 3 * cost * memory.BYTES_PER_ELEMENT / 2**20  # three (draw, datum) pairs per pass
    small = with_memory(run, mb)
    assert memory.plan(10, len(x), cost, mb) == (3, 1) and small._rows_per_pass(run.dataset.train) == 3
    # the same arithmetic per (draw, datum), only grouped differently: equal to float32 rounding
    torch.testing.assert_close(small.log_likelihood(x), ll, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(
        small.to_arviz(posterior_predictive=False).log_likelihood["obs"].values,
        idata.log_likelihood["obs"].values,
        rtol=1e-6,
        atol=1e-4,
    )
    for k, v in small.posterior(x).items():
        torch.testing.assert_close(v, post[k], rtol=1e-5, atol=1e-6)
    for k, v in small.map_states(x).items():
        assert torch.equal(v, path[k])


def test_replicates_are_bounded_and_keep_the_design(hmm_run):
    run = with_memory(hmm_run, 10**6)
    full = run.to_arviz().posterior_predictive["obs"]
    assert full.shape[:2] == (2, 6)  # every draw fits
    # a budget for ~ two replicates per chain: the export keeps the first draws of each chain
    shape = run.dataset.train.x.shape
    mb = 2 * 2 * shape.numel() * memory.BYTES_PER_ELEMENT / 2**20
    pp = with_memory(run, mb).to_arviz().posterior_predictive["obs"].values
    assert pp.shape == (2, 2) + tuple(shape)
    lengths = run.dataset.train.lengths.numpy()
    padded = np.arange(shape[1])[None, :] >= lengths[:, None]  # (N, T)
    assert np.isnan(pp[:, :, padded]).all() and np.isin(pp[:, :, ~padded], [0.0, 1.0]).all()
    # not even one replicate per chain fits: the group is left out, the rest is exported
    idata = with_memory(run, mb / 4).to_arviz()
    assert "posterior_predictive" not in groups(idata) and idata.log_likelihood["obs"].shape == (2, 6, len(lengths))


EXPORT = textwrap.dedent("""
    import json, resource, sys, torch
    import pplvm
    from pplvm.data.sequences import synthetic_hmm
    torch.set_num_threads(1)
    mb = float(sys.argv[1])
    # polyphonic-music sized: 229 sequences of up to 160 steps, 51 binary notes
    batch, _, _ = synthetic_hmm(229, 60, 160, 16, 51, emission="bernoulli", seed=0)
    card = {"model": {"family": "hmm", "states": 16, "emission": "bernoulli"}, "objective": {"name": "enum"},
            "data": {"source": "sequence_file", "path": "unused.npz", "valid_fraction": 0.0},
            "training": {"epochs": 1, "progress": False},
            "evaluation": {"draws": 5, "chains": 2, "memory_mb": mb}}
    run = pplvm.Run.from_card(card, data=batch)
    def rss_kb():
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
    # load the code the export runs (arviz, xarray, netCDF4: ~100 MB of modules) on two sequences
    small = pplvm.Run.from_card(card, data=pplvm.data.as_sequences([batch.x[0, :9], batch.x[1, :7]]))
    small.to_arviz().to_netcdf(sys.argv[2])
    before = rss_kb()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    idata = run.to_arviz()
    idata.to_netcdf(sys.argv[2])
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # KiB
    print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024,
                      "pp": list(idata.posterior_predictive["obs"].shape),
                      "ll": list(idata.log_likelihood["obs"].shape)}))
""")


def test_export_of_a_polyphonic_sized_set_stays_within_the_bound(tmp_path):
    """The export's peak resident memory above what the process held before it stays under
    evaluation.memory_mb (the peak RSS, VmHWM, reset just before it, in a fresh process). Unchunked, the
    log-likelihood pass alone would build (10 draws, 229, 159, 16, 16) float32 step factors:
    2.4 GB, and the replicates 10 × 229 × 160 × 51 values (in several copies)."""
    mb = 128  # two replicates per chain (4 × 229 × 160 × 51 float32: 30 MB) fit a quarter of it
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT, str(mb), str(tmp_path / "idata.nc")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ll"] == [2, 5, 229] and out["pp"] == [2, 2, 229, 160, 51]
    print(out)  # the figures, shown with -s
    assert out["peak_mb"] - out["before_mb"] < mb, out
