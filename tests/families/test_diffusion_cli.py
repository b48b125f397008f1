"""The diffusion family from the command line: ``pplvm evaluate`` prints the bound's per-step
table and bits/dim; ``evaluate`` and ``sample`` report progress with the time left (and not
with ``--quiet``); every shipped diffusion card fits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import pplvm
from pplvm.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"


# --------------------------------------------------------------------- CLI and cards
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A diffusion run on the digits (T = 5, a tiny U-Net, one epoch); the bound's chunks hold 10
    (step, datum) pairs (640 values of 64 pixels), so its evaluation is many passes."""
    out = tmp_path_factory.mktemp("diffusion") / "run"
    card = pplvm.load_card(
        MODELS / "diffusion_digits.toml",
        {
            "training.epochs": 1,
            "training.progress": False,
            "model.steps": 5,
            "model.channels": 4,
            "model.likelihood_batch": 640,
            "objective.num_particles": 1,
            "evaluation.draws": 1,
            "evaluation.chains": 1,
            "evaluation.max_rows": 20,
        },
    )
    pplvm.fit(card, out)
    return out


def test_evaluate_prints_bits_per_dim_and_the_per_step_table(digits_run, tmp_path, capsys, monkeypatch):
    """``pplvm evaluate`` on a diffusion run: the bound labelled a lower bound, bits/dim equal
    to -log-likelihood / (D log 2), per-step terms summing to the bound, and the plot written
    where --plot says, only there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").symlink_to(digits_run)
    capsys.readouterr()
    assert main(["evaluate", "run", "--json", "--plot", "terms.png"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["likelihood"] == "bound" and not out["exact"]
    assert set(out["terms"]) == {f"L_{t}" for t in range(6)}
    assert math.isclose(-sum(out["terms"].values()), out["log_likelihood_mean"], rel_tol=1e-5)
    assert math.isclose(out["bits_per_dim"], -out["log_likelihood_mean"] / (64 * math.log(2)), rel_tol=1e-9)
    assert (tmp_path / "terms.png").read_bytes().startswith(b"\x89PNG") and out["plot"] == "terms.png"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["evaluate", "run"]) == 0
    text = capsys.readouterr().out
    assert "lower bound" in text and "bits/dim" in text and "L_0" in text and "L_5" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no plot unless --plot asks
    # the probability-flow ODE beside the bound, on the same 3 rows; a bad row count: one line
    assert main(["evaluate", "run", "--extra", "ode", "--extra-rows", "3", "--json"]) == 0
    ode = json.loads(capsys.readouterr().out)["extra"]["ode"]
    assert ode["n"] == 3 and math.isfinite(ode["bits_per_dim"]) and math.isfinite(ode["main_bits_per_dim"])
    assert main(["evaluate", "run", "--extra", "ode", "--extra-rows", "3"]) == 0
    assert "lower bound vs ode, on the same rows" in capsys.readouterr().out
    assert main(["evaluate", "run", "--extra", "ode", "--extra-rows", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--extra-rows" in err and "\n" not in err


def test_evaluate_and_sample_show_progress_with_the_time_left(digits_run, tmp_path, capsys, monkeypatch):
    """In a log (stderr not a terminal, a line per update here instead of every 5 s),
    ``pplvm evaluate`` reports the bound's passes over its (step, datum) terms and ``pplvm
    sample`` the reverse chain's steps, each line with the count done and the time left,
    and the last line the whole count; ``--quiet`` prints none of them."""
    import re

    from pplvm import _progress

    monkeypatch.setattr(_progress, "EVERY", 0.0)
    assert main(["evaluate", str(digits_run), "--json"]) == 0
    out, err = capsys.readouterr()
    n = json.loads(out)["n"]
    lines = [ln for ln in err.splitlines() if ln.startswith("diffusion bound: ")]
    assert len(lines) == -(-5 * n // 10)  # one per chunk of 10 pairs
    assert all(re.fullmatch(r"diffusion bound: \d+/\d+ term \(\d+%\), \d+s, ETA \d+s", ln) for ln in lines[:-1])
    assert lines[-1].startswith(f"diffusion bound: {5 * n}/{5 * n} term (100%)")
    npy = tmp_path / "x.npy"
    assert main(["sample", str(digits_run), "-n", "3", "--out", str(npy)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sampling: ")]
    assert [ln.split(" step")[0] for ln in lines] == [f"sampling: {k}/4" for k in range(1, 5)]  # T - 1 steps
    assert "ETA" in lines[0] and np.load(npy).shape == (3, 64)
    assert main(["evaluate", str(digits_run), "--quiet"]) == 0
    assert main(["sample", str(digits_run), "-n", "3", "--out", str(npy), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "diffusion bound" not in err and "sampling" not in err


@pytest.mark.parametrize("path", sorted(MODELS.glob("diffusion_*.toml")), ids=lambda p: p.stem)
def test_shipped_cards_run(path, tmp_path):
    """Every shipped diffusion card fits (shortened) and writes a run directory."""
    card = pplvm.load_card(
        path,
        {
            "training.epochs": 1,
            "training.progress": False,
            "model.steps": 5,
            "objective.num_particles": 1,
            "evaluation.draws": 1,
            "evaluation.chains": 1,
            "evaluation.max_rows": 20,
        },
    )
    run = pplvm.fit(card, tmp_path / "run")
    assert math.isfinite(run.history[-1]["valid_log_likelihood"])
    assert (tmp_path / "run" / "summary.txt").is_file()
