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
    for name in (
        "card.toml",
        "checkpoint.pt",
        "metrics.jsonl",
        "inference_data.nc",
        "loss.png",
        "posterior.png",
        "clusters.png",
        "summary.txt",
    ):
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
    gmm = listing["families"]["gmm"]["objectives"]
    assert [n for n in gmm if n.islower()] == ["enum", "em"] and "TraceEnum_ELBO" in gmm  # pplvm's, then Pyro's
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
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, as promised
    assert proc.stderr.startswith("pplvm: error: invalid card: ")
    assert "model.components: expected a valid integer (got 'three')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_summary_json_is_one_json_object(card, tmp_path, capsys):
    run_cli(capsys, "fit", card, "--out", tmp_path / "r", "--quiet")
    code, out, _ = run_cli(capsys, "summary", tmp_path / "r", "--json")
    summary = json.loads(out)  # the whole output parses: no text before or after
    assert code == 0 and summary["schema"] == "pplvm.summary/1" and summary["epochs"] == 4
    # the posterior table is arviz's summary of the draws the run wrote
    idata = pplvm.evaluation.arviz.read_inference_data(tmp_path / "r" / "inference_data.nc")
    locs = idata.posterior["locs"].values  # (chain, draw, K, D)
    assert summary["posterior"]["locs[1, 0]"]["mean"] == pytest.approx(
        locs[..., 1, 0].mean(), abs=1e-4
    )  # rounded to 4 places
    assert summary["valid_log_likelihood"] == pytest.approx(
        max(h["valid_log_likelihood"] for h in pplvm.load(tmp_path / "r").history)
    )


def test_evaluate_names_the_data_option(card, tmp_path, capsys):
    run_cli(capsys, "fit", card, "--out", tmp_path / "r", "--quiet")
    for missing in ("missing.npy", "missing.npz"):
        code, _, err = run_cli(capsys, "evaluate", tmp_path / "r", "--data", tmp_path / missing)
        assert code == 2 and err.startswith(f"pplvm: error: --data '{tmp_path / missing}': no such file")
        assert "data.path" not in err and len(err.strip().splitlines()) == 1


def test_card_errors_are_one_line_however_many(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[model]\nfamily = 'gmm'\ncomponents = 'three'\ncovariance = 'odd'\nextra = 1\n[data]\nsource='iris'\n"
    )
    code, _, err = run_cli(capsys, "fit", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for key in ("model.components", "model.covariance", "model.extra"):
        assert key in err


def test_a_pickle_checkpoint_is_refused_without_suggesting_to_unpickle(card, tmp_path, capsys):
    import pickle

    run_cli(capsys, "fit", card, "--out", tmp_path / "r", "--quiet")

    class Payload:  # what an attacker's file would hold: an object whose unpickling runs code
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "r" / "checkpoint.pt").write_bytes(pickle.dumps({"format": "pplvm-checkpoint/1", "x": Payload()}))
    import torch

    buf = tmp_path / "torch_pickle.pt"
    torch.save({"format": "pplvm-checkpoint/1", "x": Payload()}, buf)
    for path in (tmp_path / "r" / "checkpoint.pt", buf):
        (tmp_path / "r" / "checkpoint.pt").write_bytes(path.read_bytes())
        code, out, err = run_cli(capsys, "evaluate", tmp_path / "r")
        assert code == 2 and "is not a readable pplvm checkpoint" in err and "pwned" not in out
        assert "weights_only" not in err and "False" not in err and len(err.strip().splitlines()) == 1


GAN_CARD = """
name = "gan_cli"
[model]
family = "gan"
latent_dim = 4
hidden = [16]
discriminator_hidden = [16]
[objective]
name = "gan_hinge"
[guide]
kind = "none"
[data]
source = "digits"
valid_fraction = 0.1
test_fraction = 0.1
[training]
epochs = 2
batch_size = 256
lr = 0.001
progress = false
[evaluation]
draws = 2
chains = 1
"""


def test_gan_refuses_likelihoods_and_is_judged_by_two_sample_tests(tmp_path, capsys):
    card = tmp_path / "gan.toml"
    card.write_text(GAN_CARD)
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "fit", card, "--out", out_dir, "--json")
    assert code == 0 and json.loads(out)["valid_log_likelihood"] is None
    code, out, err = run_cli(capsys, "evaluate", out_dir)
    assert code == 2 and out == "" and err.count("\n") == 1 and "implicit density" in err
    code, out, _ = run_cli(capsys, "two-sample", out_dir, "--permutations", "50", "--json")
    result = json.loads(out)
    assert code == 0 and result["schema"] == "pplvm.two_sample/1"
    # two epochs of a GAN are far from the digits: both tests reject (MMD p at its floor 1/51)
    assert result["mmd"]["p_value"] == pytest.approx(1 / 51) and result["classifier"]["p_value"] < 0.01
    code, out, _ = run_cli(
        capsys, "sample", out_dir, "-n", "16", "--out", tmp_path / "s.npy", "--grid", tmp_path / "grid.png"
    )
    assert code == 0 and (tmp_path / "grid.png").is_file() and np.load(tmp_path / "s.npy").shape == (16, 64)
    import shutil

    shutil.copytree(out_dir, tmp_path / "copy")
    code, _, err = run_cli(capsys, "compare", out_dir, tmp_path / "copy", "--plot", tmp_path / "c.png")
    assert code == 2 and "no log-likelihood" in err


USER_MODEL = """
import pyro, pyro.distributions as dist, torch

def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)
"""


def test_fit_a_users_model_from_the_current_directory(tmp_path, monkeypatch, capsys):
    """A card naming ``mymodel:model``, a module beside the card in the working directory, fits
    with the plain command; a wrong name is one line with exit status 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel_cli_test.py").write_text(USER_MODEL)
    (tmp_path / "card.toml").write_text(
        '[model]\nfamily = "pyro"\ntarget = "mymodel_cli_test:model"\n[guide]\nkind = "map"\n'
        '[data]\nsource = "iris"\n[training]\nepochs = 3\nprogress = false\n[evaluation]\ndraws = 4\nchains = 2\n'
    )
    assert main(["fit", "card.toml", "--out", "run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["schema"] == "pplvm.fit/1"
    assert (tmp_path / "run" / "card.toml").is_file()
    assert main(["fit", "card.toml", "--out", "run2", "--set", "model.target=mymodel_cli_test:nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "pplvm: error: model.target = 'mymodel_cli_test:nope': module 'mymodel_cli_test' has no attribute 'nope'"
    )
