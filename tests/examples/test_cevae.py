"""examples/pyro_classics/cevae: Pyro's causal effect VAE, its treatment and outcome passed by
name beside the features (the ``arrays`` source), fits through the CLI, answers evaluate,
summary and render, swaps guide and objective by one field, and (slow) scores the held-out
log p(x, t, y) above a model without the confounder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pplvm
from examples.pyro_classics.cevae import DATA, simulate
from pplvm.cli import main

CARD = Path("examples/pyro_classics/cevae.toml")


def test_the_shipped_data_are_the_generators_draw():
    data, shipped = simulate(), np.load(DATA)
    for key in ("x", "t", "y"):
        np.testing.assert_array_equal(shipped[key], data[key])


def test_fits_through_the_cli_and_answers(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", "training.epochs=2", "--set", "evaluation.draws=2", "--set", "evaluation.samples=10"]
    assert main(["fit", str(CARD), "--out", str(out), "--quiet", *sets]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    held_out = json.loads(capsys.readouterr().out)
    assert held_out["likelihood"] == "estimate" and held_out["n"] == 200
    assert math.isfinite(held_out["log_likelihood_mean"])
    assert main(["summary", str(out)]) == 0
    assert main(["render", str(out / "card.toml"), "--out", str(tmp_path / "graph.png")]) == 0
    assert (tmp_path / "graph.png").is_file()


@pytest.mark.parametrize("swap", ["guide.kind=amortized", "objective.name=iwae"])
def test_guide_and_objective_swap_by_one_field(swap):
    key, value = swap.split("=")
    run = pplvm.fit(CARD, overrides={key: value, "training.epochs": 2, "training.progress": False})
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert math.isfinite(float(run.log_likelihood(run.dataset.valid[:20], samples=10).mean()))


def baseline(train, test) -> float:
    """Without a confounder: independent Gaussian features, t ~ Bernoulli, y | t ~ Bernoulli per
    arm, each fitted on the training split by maximum likelihood; mean held-out log p(x, t, y)."""
    x, t, y = train.x, train.inputs["t"], train.y
    features = torch.distributions.Normal(x.mean(0), x.std(0)).log_prob(test.x).sum(-1)
    p_t = t.float().mean()
    treat = torch.distributions.Bernoulli(p_t).log_prob(test.inputs["t"].float())
    p_y = torch.stack([y[t == k].float().mean() for k in range(2)])
    outcome = torch.distributions.Bernoulli(p_y[test.inputs["t"]]).log_prob(test.y.float())
    return float((features + treat + outcome).mean())


@pytest.mark.slow
def test_the_card_beats_a_model_without_the_confounder():
    run = pplvm.fit(CARD, overrides={"training.progress": False})
    d = run.dataset
    ours = float(run.log_likelihood(d.test, samples=1000).mean())
    assert ours > baseline(d.train, d.test) + 0.1  # measured: -14.998 against -15.204 (the truth: -14.943)
