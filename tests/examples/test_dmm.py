"""The Deep Markov Model example (examples/pyro_classics/dmm.py, dmm.toml): its card runs
through ``pplvm fit``, ``evaluate`` (per sequence and per step), ``summary`` and ``render``; its
guide and its objective each change by one card field; fitted for its card's epochs, its
held-out log-likelihood per step beats independent Bernoulli keys (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pplvm
from pplvm.cli import main
from pplvm.run import card_dataset

ROOT = Path(__file__).resolve().parents[2]
CARD = str(ROOT / "examples" / "pyro_classics" / "dmm.toml")
#: a small data set for the fast tests (40 sequences of 4-8 steps), few draws in the export
TINY = [
    *("--set", "data.n=40", "--set", "data.min_length=4", "--set", "data.max_length=8"),
    *("--set", "evaluation.samples=5", "--set", "evaluation.draws=2"),
]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the card names its model by import path from the repository root
    monkeypatch.setenv("PPLVM_MAX_EPOCHS", "1")


def independent_keys(train, test) -> float:
    """Baseline: each key an independent Bernoulli, its probability the key's frequency over
    the training steps (add-one smoothed): held-out log-likelihood per step, in closed form."""
    mask = torch.arange(train.x.shape[1]) < train.lengths[:, None]
    p = (train.x[mask].sum(0) + 1) / (mask.sum() + 2)
    held = test.x[torch.arange(test.x.shape[1]) < test.lengths[:, None]]
    return float((held * p.log() + (1 - held) * (1 - p).log()).sum() / len(held))


def test_card_fits_evaluates_summarises_and_renders_through_the_cli(at_root, tmp_path, capsys):
    out = tmp_path / "dmm"
    assert main(["fit", CARD, "--out", str(out), "--quiet", *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--samples", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    test = card_dataset(pplvm.load(out).card).test
    assert result["data"] == "test" and result["n"] == len(test) and result["steps"] == int(test.lengths.sum())
    assert result["log_likelihood_per_step"] == pytest.approx(result["log_likelihood_sum"] / result["steps"])
    assert math.isfinite(result["log_likelihood_per_step"]) and result["likelihood"] == "estimate"
    assert main(["evaluate", str(out), "--samples", "20"]) == 0
    assert "per step = " in capsys.readouterr().out
    assert main(["summary", str(out)]) == 0
    assert "no global latents" in capsys.readouterr().out
    assert main(["render", CARD, "--out", str(tmp_path / "dmm.png"), *TINY]) == 0
    assert (tmp_path / "dmm.png").stat().st_size > 0


@pytest.mark.parametrize("field", ["guide.kind=amortized", "objective.name=iwae"])
def test_guide_and_objective_each_change_by_one_field(at_root, tmp_path, field):
    """pplvm's own guide (a backward GRU and a combiner per step, serving z_1 .. z_T) in place
    of the module's, or the IWAE bound in place of the ELBO: the fit runs and scores held-out
    sequences."""
    out = tmp_path / "run"
    assert main(["fit", CARD, "--out", str(out), "--quiet", *TINY, "--set", field]) == 0
    run = pplvm.load(out)
    key, value = field.split("=")
    assert getattr(getattr(run.card, key.split(".")[0]), key.split(".")[1]) == value
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert torch.isfinite(run.log_likelihood(card_dataset(run.card).valid[:5], samples=5)).all()


@pytest.mark.slow
def test_held_out_log_likelihood_per_step_beats_independent_keys(monkeypatch, tmp_path):
    """Fitted for the card's 60 epochs, the DMM's held-out log-likelihood per step beats
    independent Bernoulli keys by more than 0.5 nats (the chords persist over time and hold
    keys down together; the baseline sees neither)."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "dmm"
    assert main(["fit", CARD, "--out", str(out), "--quiet"]) == 0
    run = pplvm.load(out)
    data = card_dataset(run.card)
    per_step = run.evaluate(data.test)["log_likelihood_per_step"]
    baseline = independent_keys(data.train, data.test)
    print(f"DMM {per_step:.4f} nats/step, independent keys {baseline:.4f}")
    assert per_step > baseline + 0.5
