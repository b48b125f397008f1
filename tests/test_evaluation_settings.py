"""Evaluation settings act where they are read: ``[evaluation]``, not ``[model]``.

The number of importance samples k of an estimated log-likelihood is ``evaluation.samples``,
which is not part of a checkpoint's fingerprint: a finished run is evaluated with another k
from Python (``run.log_likelihood(x, samples=k)``, ``run.evaluate(x, samples=k)``) or the
command line (``pplvm evaluate RUN --samples k``) without touching its ``card.toml``. Runs and
cards written when the key was ``model.likelihood_samples`` keep loading.

The oracle: a VAE with a linear decoder and a Gaussian likelihood, ``x | z ~ N(z W + b,
diag σ²)``, ``z ~ N(0, I)``, whose marginal ``N(b, WᵀW + diag σ²)`` is closed form.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pplvm
from pplvm import rundir
from pplvm.cli import main
from pplvm.errors import ArgumentError
from pplvm.training.checkpoint import load_checkpoint, save_checkpoint

L, D = 2, 4
CARD = {
    "model": {"family": "vae", "latent_dim": L, "hidden": [], "likelihood": "gaussian"},
    "guide": {"kind": "amortized"},
    "objective": {"name": "elbo"},
    "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.2, "standardize": False},
    "training": {"epochs": 150, "lr": 0.03, "batch_size": 40, "progress": False},
    "evaluation": {"draws": 5, "chains": 2, "samples": 20},
}


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(10)
    w = torch.tensor([[1.0, 0.5, 0.0, 0.3], [0.0, 1.0, -1.0, 0.2]])
    return torch.randn(200, L, generator=g) @ w + 0.4 * torch.randn(200, D, generator=g)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    x = _data()
    out = tmp_path_factory.mktemp("eval") / "run"
    run = pplvm.fit(CARD, data=x.numpy(), out=out)
    return run, out, x[:40]


def exact_log_likelihood(run, x: torch.Tensor) -> torch.Tensor:
    """``log N(x | b, WᵀW + diag σ²)``, with the decoder's affine map read off at z = 0 and e_i."""
    with torch.no_grad():
        d = run.model.decode(torch.cat([torch.zeros(1, L), torch.eye(L)]), None)
        b, w, sd = d.mean[0], d.mean[1:] - d.mean[0], d.stddev[0]
        return torch.distributions.MultivariateNormal(b, w.T @ w + torch.diag(sd**2)).log_prob(x)


def test_another_k_from_python_without_touching_the_card(fitted):
    """The card's k is the default; any other k is one argument away, and the estimates close
    in on the closed form as k grows: ``E log p̂_k`` rises towards ``log p(x)`` (the gap at
    k = 1 is the encoder's KL from the posterior). The estimator's draws are seeded, so the
    numbers are fixed; over 3 training seeds the worst row at k = 5000 was 0.012 nats off
    and the mean gaps were 0.05-0.17 (k = 1), within ±0.01 (k = 20) and ±0.0005 (k = 5000):
    the bounds below leave about 4x room."""
    run, out, rows = fitted
    card = (out / "card.toml").read_bytes()
    exact = exact_log_likelihood(run, rows)
    at = {k: run.log_likelihood(rows.numpy(), samples=k) for k in (1, 20, 5000)}
    torch.testing.assert_close(run.log_likelihood(rows.numpy()), at[20], rtol=0, atol=0)  # the card's k
    gap = {k: float((exact - est).mean()) for k, est in at.items()}
    assert gap[1] > 0.04 and abs(gap[20]) < 0.04 and abs(gap[5000]) < 0.002, gap
    assert gap[1] > gap[20] - 0.002 and gap[1] > gap[5000], gap  # non-decreasing estimates, to MC error
    assert float((exact - at[5000]).abs().max()) < 0.05
    assert run.evaluate(rows.numpy(), samples=5000)["log_likelihood_mean"] == pytest.approx(float(at[5000].mean()))
    assert (out / "card.toml").read_bytes() == card


def test_another_k_from_the_command_line(fitted, tmp_path, capsys):
    run, out, rows = fitted
    np.save(tmp_path / "rows.npy", rows.numpy())
    card = (out / "card.toml").read_bytes()
    assert main(["evaluate", str(out), "--data", str(tmp_path / "rows.npy"), "--samples", "5000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["log_likelihood_mean"] == pytest.approx(float(run.log_likelihood(rows.numpy(), samples=5000).mean()))
    assert result["log_likelihood_mean"] == pytest.approx(float(exact_log_likelihood(run, rows).mean()), abs=0.002)
    assert (out / "card.toml").read_bytes() == card  # and the run still loads: nothing looks tampered
    assert pplvm.load(out).card.evaluation.samples == 20
    with pytest.raises(ArgumentError, match="samples: expected a positive integer"):
        run.log_likelihood(rows.numpy(), samples=0)
    assert main(["evaluate", str(out), "--samples", "0"]) == 2
    assert capsys.readouterr().err.strip() == "pplvm: error: --samples: expected a positive integer, got 0"


def test_a_run_written_before_the_move_loads(fitted, tmp_path):
    """A run directory from before: ``model.likelihood_samples`` in card.toml and in the
    checkpoint's fingerprint. It loads, reading the key as ``evaluation.samples``, with a
    warning that says where the key went."""
    _, out, rows = fitted
    old = tmp_path / "old"
    old.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (old / name).write_bytes((out / name).read_bytes())
    text = (out / "card.toml").read_text()
    assert "samples = 20\n" in text
    text = text.replace("samples = 20\n", "").replace('family = "vae"\n', 'family = "vae"\nlikelihood_samples = 20\n')
    (old / "card.toml").write_text(text)
    ckpt = load_checkpoint(old / "checkpoint.pt")
    ckpt["extras"]["card"]["model.likelihood_samples"] = 20  # what fingerprints held then
    save_checkpoint(old / "checkpoint.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.warns(FutureWarning, match=r"model.likelihood_samples is now evaluation.samples"):
        run = pplvm.load(old)
    assert run.card.evaluation.samples == 20 and "likelihood_samples" not in run.card.model.model_dump()
    torch.testing.assert_close(run.log_likelihood(rows.numpy()), pplvm.load(out).log_likelihood(rows.numpy()))
    # a real difference in the model is still named
    ckpt["extras"]["card"]["model.latent_dim"] = 3
    save_checkpoint(old / "checkpoint.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.warns(FutureWarning), pytest.raises(pplvm.RunDirError, match=r"model.latent_dim = 2 in card.toml"):
        pplvm.load(old)
    assert "model.likelihood_samples" in rundir.RETIRED
