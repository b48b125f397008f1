"""Sequence data: checks with one clear DataError each, the bundled and synthetic sources,
user .npz files with their own splits, and runs on sequences end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import statsmodels.api as sm
import torch

import pplvm
from pplvm.cli import main
from pplvm.data import Batch, as_sequences, load_dataset, read_sequences, synthetic_hmm
from pplvm.errors import DataError

TINY_TRAINING = {"epochs": 3, "lr": 0.05, "progress": False}
TINY_EVAL = {"draws": 4, "chains": 2, "max_rows": 50}


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_as_sequences_pads_lists_and_checks_lengths():
    b = as_sequences([np.arange(4.0), np.arange(2.0)])
    assert b.x.shape == (2, 4, 1) and b.lengths.tolist() == [4, 2]
    assert b.x[1, 2:].abs().sum() == 0
    full = as_sequences(Batch(x=torch.ones(3, 5, 2)))
    assert full.lengths.tolist() == [5, 5, 5]
    with pytest.raises(DataError, match="x lengths: sequence 1 has length 6 but the padded data has only 5"):
        as_sequences(Batch(x=torch.ones(2, 5, 2), lengths=torch.tensor([5, 6])), "x")
    with pytest.raises(DataError, match="x: sequence 1 has 3 features but sequence 0 has 2"):
        as_sequences([np.zeros((2, 2)), np.zeros((2, 3))], "x")
    with pytest.raises(DataError, match="ragged"):
        as_sequences(np.array([np.zeros(2), np.zeros(3)], dtype=object), "x")


def test_synthetic_hmm_is_seeded_and_padded():
    a, paths, truth = synthetic_hmm(10, 5, 9, 3, 2, seed=4)
    b, paths_b, _ = synthetic_hmm(10, 5, 9, 3, 2, seed=4)
    assert torch.equal(a.x, b.x) and np.array_equal(paths, paths_b)
    assert ((a.lengths >= 5) & (a.lengths <= 9)).all()
    mask = np.arange(a.x.shape[1]) < a.lengths.numpy()[:, None]
    assert (paths[~mask] == -1).all() and (paths[mask] >= 0).all()
    np.testing.assert_allclose(truth["transition"].sum(-1), 1.0)


def test_sunspots_source_cuts_the_series_into_sequences():
    cfg = pplvm.card_from_dict(
        {"model": {"family": "hmm"}, "data": {"source": "sunspots", "length": 30, "valid_fraction": 0.0}}
    ).data
    ds = load_dataset(cfg)
    series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    assert len(ds.train) == 11 and int(ds.train.lengths.sum()) == len(series) == 309
    # random split by sequence: every sequence is a consecutive 30-year piece of the series
    pieces = [series[i : i + 30] for i in range(0, len(series), 30)]
    found = [
        next(i for i, p in enumerate(pieces) if len(p) == n and np.allclose(seq[:n, 0], p, rtol=1e-6))
        for seq, n in zip(ds.train.x, ds.train.lengths.tolist())
    ]
    assert sorted(found) == list(range(11)) and len(pieces[-1]) == 9


def test_npz_with_its_own_splits_keeps_them(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(
        tmp_path / "seq.npz",
        train=rng.normal(size=(12, 2)),
        train_lengths=[5, 7],
        valid=rng.normal(size=(4, 2)),
        valid_lengths=[1, 3],
        test=rng.normal(size=(2, 4, 2)),
    )
    card = {
        "model": {"family": "hmm", "states": 2},
        "data": {"source": "sequence_file", "path": path, "valid_fraction": 0.5},
    }
    ds = load_dataset(pplvm.card_from_dict(card).data)
    assert ds.train.lengths.tolist() == [5, 7] and ds.valid.lengths.tolist() == [1, 3]
    assert ds.test.x.shape == (2, 4, 2) and ds.test.lengths.tolist() == [4, 4]
    assert ds.info["fixed_splits"] is True


def test_npz_with_only_train_is_split_at_random(tmp_path):
    path = write_npz(tmp_path / "seq.npz", train=np.zeros((30, 1)), train_lengths=[3] * 10)
    card = {"model": {"family": "hmm"}, "data": {"source": "sequence_file", "path": path, "valid_fraction": 0.2}}
    ds = load_dataset(pplvm.card_from_dict(card).data)
    assert len(ds.train) == 8 and len(ds.valid) == 2


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"train": np.zeros((6, 2))}, "key 'train': steps of shape .* need per-sequence lengths in 'train_lengths'"),
        ({"train": np.zeros((6, 2)), "train_lengths": [2, 3]}, "key 'train_lengths'.*sum to 5 but the data has 6"),
        ({"train": np.zeros((6, 2)), "train_lengths": [2.5, 3.5]}, "key 'train_lengths'.*must be integers"),
        ({"train": np.zeros((6, 2)), "train_lengths": [6, 0]}, "key 'train_lengths'.*at least 1"),
        (
            {"train": np.array([[0.0], [np.nan], [1.0]]), "train_lengths": [1, 2]},
            r"key 'train': 1 step\(s\) contain NaN .*sequence 1, step 0",
        ),
        ({"train": np.array([np.zeros((2, 1)), np.zeros((3, 1))], dtype=object)}, "key 'train': ragged or object"),
        ({"valid": np.zeros((2, 1)), "valid_lengths": [2]}, "no 'train' array"),
        ({"train": np.zeros((2, 1)), "train_lengths": [2], "valid_length": [2]}, "unknown key.*valid_length"),
    ],
)
def test_npz_errors_name_the_field(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        read_sequences(path)


def test_categories_outside_k_in_a_fixed_valid_split(tmp_path):
    path = write_npz(
        tmp_path / "sym.npz",
        train=np.array([0, 1, 2, 1, 0]),
        train_lengths=[3, 2],
        valid=np.array([0, 4]),
        valid_lengths=[2],
    )
    card = {
        "model": {"family": "hmm", "states": 2, "emission": "categorical", "categories": 3},
        "data": {"source": "sequence_file", "path": path},
    }
    with pytest.raises(DataError, match=r"data \(valid split\): value 4 .*model.categories = 3"):
        pplvm.Run.from_card(card)


def test_standardized_sequences_log_likelihood_is_in_data_units():
    """Change of variables: the run's log-likelihood of raw data equals the model's on raw data
    with the fitted parameters mapped back (μ·s + m, σ·s), per sequence."""
    card = {
        "model": {"family": "hmm", "states": 2},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "nile", "length": 20, "standardize": True},
        "training": TINY_TRAINING,
    }
    run = pplvm.fit(card)
    raw = run.dataset.transform.inverse(run.dataset.valid)
    p = run.params()
    loc, scale = run.transform.loc, run.transform.scale
    in_units = {**p, "locs": p["locs"] * scale + loc, "scales": p["scales"] * scale}
    expected = run.model.log_likelihood(as_sequences(raw), in_units)
    torch.testing.assert_close(run.log_likelihood(raw), expected, rtol=1e-5, atol=1e-3)


def test_sequence_run_saves_loads_exports_and_samples(tmp_path, capsys):
    card = {
        "name": "hmm_io",
        "model": {"family": "hmm", "states": 2, "sample_length": 7},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_hmm", "n": 12, "min_length": 4, "max_length": 9, "states": 2, "dim": 1},
        "training": TINY_TRAINING,
        "evaluation": TINY_EVAL,
    }
    run = pplvm.fit(card, tmp_path / "run")
    loaded = pplvm.load(tmp_path / "run")
    valid = run.dataset.transform.inverse(run.dataset.valid)
    torch.testing.assert_close(loaded.log_likelihood(valid), run.log_likelihood(valid))
    idata = loaded.to_arviz()
    observed = idata.observed_data["obs"].values
    lengths = run.dataset.train.lengths.numpy()
    assert observed.shape[:2] == (len(lengths), run.dataset.train.x.shape[1])
    mask = np.arange(observed.shape[1]) < lengths[:, None]
    assert np.isnan(observed[~mask]).all() and np.isfinite(observed[mask]).all()
    replicated = idata.posterior_predictive["obs"].values  # same design: N sequences, same lengths
    assert replicated.shape == (2, 4) + observed.shape
    assert np.isnan(replicated[:, :, ~mask]).all() and np.isfinite(replicated[:, :, mask]).all()
    assert idata.log_likelihood["obs"].shape == (2, 4, len(lengths))
    out = tmp_path / "s.npy"
    assert main(["sample", str(tmp_path / "run"), "-n", "3", "--out", str(out)]) == 0
    assert np.load(out).shape == (3, 7, 1)
    assert main(["sample", str(tmp_path / "run"), "-n", "3", "--out", str(tmp_path / "s.csv")]) == 2
    assert "use .npy" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    held_out = write_npz(
        tmp_path / "held.npz",
        train=np.zeros((3, 1)),
        train_lengths=[3],
        test=np.array([0.5, -0.5, 1.0, 2.0]),
        test_lengths=[1, 3],
    )
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--data", held_out, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = loaded.log_likelihood([np.array([0.5]), np.array([-0.5, 1.0, 2.0])])
    assert result["n"] == 2 and result["data"].endswith("(test)")
    assert result["log_likelihood_sum"] == pytest.approx(float(expected.sum()), rel=1e-6)


def test_sequences_passed_from_python_are_split_by_sequence():
    seqs = as_sequences([np.arange(n, dtype=float) % 3 for n in (5, 9, 4, 7, 6)])
    card = {
        "model": {"family": "hmm", "states": 2},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "nile", "valid_fraction": 0.4},
        "training": TINY_TRAINING,
    }
    run = pplvm.fit(card, data=seqs)
    assert len(run.dataset.train) == 3 and len(run.dataset.valid) == 2
    assert sorted(run.dataset.train.lengths.tolist() + run.dataset.valid.lengths.tolist()) == [4, 5, 6, 7, 9]
