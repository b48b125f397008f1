"""The CLI end to end in a temporary directory: fit, evaluate, sample, summary, resume, list;
stable --json; one-line errors with exit status 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pplvm
from pplvm.cli import main

CARD = """
name = "cli"
[model]
family = "gmm"
components = 2
[objective]
name = "enum"
[data]
source = "synthetic_gmm"
n = 150
components = 2
[training]
epochs = 4
progress = false
[evaluation]
draws = 10
chains = 2
"""


@pytest.fixture
def card(tmp_path):
    path = tmp_path / "card.toml"
    path.write_text(CARD)
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_evaluate_sample_summary_resume(card, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "fit", card, "--out", out_dir, "--set", "model.covariance=full", "--json")
    assert code == 0
    fit = json.loads(out)
    assert fit["schema"] == "pplvm.fit/1" and fit["epochs"] == 4 and fit["run_dir"] == str(out_dir)
    for name in ("card.toml", "checkpoint.pt", "metrics.jsonl", "inference_data.nc", "loss.png",
                 "posterior.png", "clusters.png", "summary.txt"):
        assert (out_dir / name).is_file(), name
    assert pplvm.load_card(out_dir / "card.toml").model.covariance == "full"  # override recorded

    code, out, _ = run_cli(capsys, "evaluate", out_dir, "--json")
    ev = json.loads(out)
    run = pplvm.load(out_dir)
    valid = pplvm.load_dataset(run.card.data).valid
    expected = run.log_likelihood(run.transform.inverse(valid))
    assert ev["schema"] == "pplvm.evaluate/1" and ev["data"] == "valid" and ev["n"] == 30 and ev["exact"]
    assert ev["log_likelihood_mean"] == pytest.approx(expected.mean().item(), rel=1e-6)

    x = np.random.default_rng(0).normal(size=(7, 2))
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run_cli(capsys, "evaluate", out_dir, "--data", tmp_path / "x.npy", "--json")
    assert json.loads(out)["log_likelihood_sum"] == pytest.approx(run.log_likelihood(x).sum().item(), rel=1e-6)

    code, out, _ = run_cli(capsys, "sample", out_dir, "-n", 25, "--out", tmp_path / "s.npy", "--seed", 3)
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (25, 2)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), run.sample(25, seed=3).numpy())

    code, out, _ = run_cli(capsys, "summary", out_dir)
    assert code == 0 and "posterior of the global latents" in out and "locs[0, 0]" in out

    code, out, _ = run_cli(capsys, "resume", out_dir, "--epochs", 6, "--json")
    assert code == 0 and json.loads(out)["epochs"] == 6


def test_list_json_is_stable(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["schema"] == "pplvm.list/1"
    assert set(listing) == {"schema", "families", "guides", "objectives", "datasets"}
    assert listing["families"]["gmm"]["objectives"] == ["enum"]
    assert {"elbo", "meanfield", "enum", "renyi", "iwae"} <= set(listing["objectives"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "training.lr=0"], "training.lr: expected greater than 0"),
        (["--set", "objective.name=elbo"], "objective.name = 'elbo' cannot train family 'gmm'"),
        (["--set", "model.components=500"], "model.components = 500"),
        (["--set", "model.dim=3"], "model.dim = 3"),
    ],
)
def test_errors_are_one_line_with_exit_2(card, tmp_path, capsys, args, message):
    code, out, err = run_cli(capsys, "fit", card, "--out", tmp_path / "r", *args)
    assert code == 2
    assert err.startswith("pplvm: error: ") and message in err
    assert "Traceback" not in err


def test_evaluate_errors(card, tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nothing")
    assert code == 2 and "not a pplvm run directory" in err
    run_cli(capsys, "fit", card, "--out", tmp_path / "r", "--quiet")
    np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "r", "--data", tmp_path / "bad.npy")
    assert code == 2 and "expected 2 columns (the model's dimension), got 5" in err


def test_console_script_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nfamily = 'gmm'\ncomponents = 'three'\n[data]\nsource='iris'\n")
    proc = subprocess.run([sys.executable, "-m", "pplvm.cli", "fit", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[0] == "pplvm: error: invalid card:"
    assert "model.components: expected a valid integer (got 'three')" in proc.stderr
    assert "Traceback" not in proc.stderr


USER_MODEL = '''
import pyro, pyro.distributions as dist, torch

def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)
'''


def test_fit_a_users_model_from_the_current_directory(tmp_path, monkeypatch, capsys):
    """A card naming ``mymodel:model``, a module beside the card in the working directory, fits
    with the plain command; a wrong name is one line with exit status 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel_cli_test.py").write_text(USER_MODEL)
    (tmp_path / "card.toml").write_text(
        '[model]\nfamily = "pyro"\ntarget = "mymodel_cli_test:model"\n[guide]\nkind = "map"\n'
        '[data]\nsource = "iris"\n[training]\nepochs = 3\nprogress = false\n[evaluation]\ndraws = 4\nchains = 2\n')
    assert main(["fit", "card.toml", "--out", "run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["schema"] == "pplvm.fit/1"
    assert (tmp_path / "run" / "card.toml").is_file()
    assert main(["fit", "card.toml", "--out", "run2", "--set", "model.target=mymodel_cli_test:nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pplvm: error: model.target = 'mymodel_cli_test:nope': module 'mymodel_cli_test' "
                   "has no attribute 'nope'")
