"""The semi-supervised VAE M2 example (examples/pyro_classics/ss_vae_m2.py, ss_vae_m2.toml) on
the 8x8 digits with 90% of the labels hidden: its card runs through ``pplvm fit``, ``evaluate``,
``summary`` and ``render``; the label posterior comes out of the API (importance-sampled, with
standard errors) as probabilities; its guide changes by one card field (pplvm's amortized
encoder over z, the label enumerated in the model); fitted for its card's epochs, the label
posterior classifies the test digits better than a logistic regression on the labelled rows
(slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pplvm
from pplvm.cli import main
from pplvm.run import card_dataset

ROOT = Path(__file__).resolve().parents[2]
CARD = str(ROOT / "examples" / "pyro_classics" / "ss_vae_m2.toml")
#: small networks and few draws for the fast tests
TINY = [
    "--set",
    "model.options.hidden_layers=[16]",
    "--set",
    "model.options.z_dim=2",
    "--set",
    "evaluation.draws=2",
    "--set",
    "evaluation.samples=5",
    "--set",
    "training.batch_size=400",
]


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the card names its model by import path from the repository root
    monkeypatch.setenv("PPLVM_MAX_EPOCHS", "1")


def _test_split(run):
    """The test digits without their labels (the model infers them) and the true labels."""
    data = card_dataset(run.card)
    return data.test.x, torch.as_tensor(data.labels["test"])


def test_card_fits_evaluates_summarises_renders_and_classifies(at_root, tmp_path, capsys):
    out = tmp_path / "m2"
    assert main(["fit", CARD, "--out", str(out), "--quiet", *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--samples", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["log_likelihood_mean"]) and result["likelihood"] == "estimate"
    assert main(["summary", str(out)]) == 0
    assert "no global latents" in capsys.readouterr().out
    assert main(["render", CARD, "--out", str(tmp_path / "m2.png"), *TINY]) == 0
    assert (tmp_path / "m2.png").stat().st_size > 0

    run = pplvm.load(out)
    x, labels = _test_split(run)
    post = run.posterior(x[:20], samples=5)
    probs, stderr = post["y_unobserved"], post["y_unobserved_stderr"]
    assert probs.shape == stderr.shape == (20, 10) and bool((stderr >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(20))
    modes = run.map_states(x[:20], samples=5)["y_unobserved"]  # one-hot digits, as the site holds them
    assert torch.equal(modes.argmax(-1), probs.argmax(-1)) and torch.equal(modes.sum(-1), torch.ones(20))


def test_the_guide_changes_by_one_field(at_root, tmp_path):
    """pplvm's amortized encoder over z in place of the module's guide (the label then summed
    out in the model): the fit runs, scores held-out digits and classifies them."""
    out = tmp_path / "run"
    assert main(["fit", CARD, "--out", str(out), "--quiet", *TINY, "--set", "guide.kind=amortized"]) == 0
    run = pplvm.load(out)
    assert run.card.guide.kind == "amortized"
    x, _ = _test_split(run)
    assert torch.isfinite(run.log_likelihood(x[:5], samples=5)).all()
    torch.testing.assert_close(run.posterior(x[:5], samples=5)["y_unobserved"].sum(-1), torch.ones(5))


def logistic_regression_accuracy(run) -> float:
    """Baseline: scikit-learn's logistic regression (default C = 1) fitted on the labelled
    training rows alone (10%: 136 digits), its accuracy on the test digits."""
    from sklearn.linear_model import LogisticRegression

    data = card_dataset(run.card)
    known = data.train.y >= 0
    fit = LogisticRegression(max_iter=5000).fit(data.train.x[known].numpy(), data.train.y[known].numpy())
    return float((fit.predict(data.test.x.numpy()) == np.asarray(data.labels["test"])).mean())


@pytest.mark.slow
def test_label_posterior_beats_logistic_regression_on_the_labelled_rows(monkeypatch, tmp_path):
    """Fitted for the card's epochs with 10% of the labels, the M2 model's label posterior
    (importance-sampled through run.posterior) classifies the test digits more accurately than
    a logistic regression trained on the labelled rows (measured: see the examples' README)."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "m2"
    assert main(["fit", CARD, "--out", str(out), "--quiet"]) == 0
    run = pplvm.load(out)
    x, labels = _test_split(run)
    accuracy = float((run.posterior(x)["y_unobserved"].argmax(-1) == labels).float().mean())
    assert accuracy > logistic_regression_accuracy(run)
