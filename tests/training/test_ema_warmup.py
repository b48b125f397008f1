"""The moving average of the weights (``training.ema``) and the lr warm-up
(``training.lr_warmup_steps``) against their formulas, step by step, on the plain and the
traced step; then what a user sees: held-out metrics for both weights, early stopping on the
EMA's, the EMA weights by default after a fit and on load, ``--weights raw|ema``."""

from __future__ import annotations

import math

import pytest
import torch

import pplvm
from pplvm.cli import main
from pplvm.training._ema import ema_decay
from pplvm.training.checkpoint import load_checkpoint

# 64 rows in batches of 16: 4 steps an epoch
CARD = {
    "name": "ema",
    "model": {"family": "vae", "latent_dim": 2, "hidden": [8], "likelihood": "gaussian"},
    "guide": {"kind": "amortized"},
    "objective": {"name": "elbo"},
    "data": {"source": "moons", "n": 64, "standardize": True, "valid_fraction": 0.0, "test_fraction": 0.0},
    "training": {"epochs": 3, "batch_size": 16, "lr": 0.01, "progress": False, "ema": 0.9, "ema_warmup": True},
    "evaluation": {"export": False, "samples": 4},
}


def card(data=None, **training):
    return {**CARD, "data": {**CARD["data"], **(data or {})}, "training": {**CARD["training"], **training}}


def parameters(run) -> dict[str, torch.Tensor]:
    return {
        f"{who}.{name}": p.detach().clone()
        for who, module in (("model", run.model), ("guide", run.guide))
        for name, p in module.named_parameters()
    }


@pytest.mark.parametrize("compile", ["off", "trace"])
def test_ema_and_lr_warmup_follow_their_formulas_at_every_step(compile):
    """EMA: e_0 = θ_0, e_t = d_t e_(t-1) + (1 - d_t) θ_t with d_t = min(0.9, (1 + t) / (10 + t)),
    from the raw parameters θ_t recorded after each step (float64 oracle; the fit's float32
    lerps agree to 1e-6). Warm-up over 6 updates composed with a cosine schedule (stepped per
    epoch, 4 updates each): lr_k = cos_lr(epoch) · min(1, k / 6), read by an optimiser hook that
    runs after the warm-up's."""
    run = pplvm.Run.from_card(card(compile=compile, lr_warmup_steps=6, lr_schedule="cosine", lr_final_ratio=0.1))
    raw, lrs = [], []
    step, setup = run.rule.step, run.rule.setup

    def recording_step(*args, **kwargs):
        if not raw:
            raw.append(parameters(run))  # θ_0: where the average starts
        loss = step(*args, **kwargs)
        raw.append(parameters(run))
        return loss

    def recording_setup(*args, **kwargs):
        setup(*args, **kwargs)
        run.rule.optimizer.register_step_pre_hook(lambda opt, a, k: lrs.append(opt.param_groups[0]["lr"]))

    run.rule.step, run.rule.setup = recording_step, recording_setup
    run.fit()
    if compile == "trace":
        assert "traced graph" in run.rule.describe()
    assert len(raw) == 13 and len(lrs) == 12

    ema = {k: v.double() for k, v in raw[0].items()}
    for t, theta in enumerate(raw[1:], 1):
        d = min(0.9, (1 + t) / (10 + t))
        assert d == ema_decay(0.9, t, warmup=True)
        ema = {k: d * ema[k] + (1 - d) * theta[k].double() for k in ema}
    after = parameters(run)  # after a fit the model and guide hold the averages
    for k in ema:
        torch.testing.assert_close(after[k].double(), ema[k], rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(after[k], raw[-1][k]) for k in after)  # (not the raw ones)

    for k, lr in enumerate(lrs, 1):
        epoch = (k - 1) // 4
        cosine = 0.001 + (0.01 - 0.001) * (1 + math.cos(math.pi * epoch / 3)) / 2
        assert lr == pytest.approx(cosine * min(1.0, k / 6), rel=1e-9)
    assert run.rule.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 + 0.009 * (1 + math.cos(math.pi)) / 2)


@pytest.fixture
def fitted(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(pplvm.Run, "write_artifacts", lambda run: None)  # plots are not what is tested
    out = tmp_path_factory.mktemp("ema") / "run"
    run = pplvm.fit(card({"valid_fraction": 0.2, "n": 80}, ema=0.8, epochs=4), out)
    return run, out


def test_held_out_metrics_log_both_weights_and_early_stopping_follows_the_emas(fitted):
    run, out = fitted
    scored = [h for h in run.history if "valid_log_likelihood_ema" in h]
    assert len(scored) == 4 and all(
        {"valid_loss", "valid_loss_ema", "valid_log_likelihood"} <= h.keys() for h in scored
    )
    assert run.trainer.monitor == "valid_loss_ema"  # the VAE's monitor (valid_loss), at the EMA weights
    best = min(scored, key=lambda h: h["valid_loss_ema"])
    assert run.trainer.state.best == best["valid_loss_ema"]
    assert run.trainer.state.best_epoch == best["epoch"]


def test_a_fitted_run_is_evaluated_and_sampled_with_its_ema_weights_unless_asked(fitted, capsys):
    run, out = fitted
    ckpt = load_checkpoint(out / "checkpoint.pt")
    kept = ckpt["best"]
    loaded, raw = pplvm.load(out), pplvm.Run.load(out, weights="raw")
    assert (run.weights, loaded.weights, raw.weights) == ("ema", "ema", "raw")
    for name, p in loaded.model.named_parameters():
        assert torch.equal(p.detach(), kept["ema"]["model"][name]) and torch.equal(
            p.detach(), dict(run.model.named_parameters())[name].detach()
        )
        assert torch.equal(dict(raw.model.named_parameters())[name].detach(), kept["model"][name])
    x = loaded.dataset.valid
    assert loaded.evaluate(x, samples=4)["log_likelihood_mean"] != raw.evaluate(x, samples=4)["log_likelihood_mean"]

    assert main(["sample", str(out), "-n", "5", "--out", str(out / "raw.npy"), "--weights", "raw"]) == 0
    assert main(["evaluate", str(out), "--split", "valid", "--samples", "4", "--json"]) == 0
    assert '"weights": "ema"' in capsys.readouterr().out


def test_asking_for_ema_weights_of_a_run_without_them_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pplvm.Run, "write_artifacts", lambda run: None)
    pplvm.fit(card(ema=None, epochs=1), tmp_path / "run")
    with pytest.raises(pplvm.PplvmError, match=r"^weights = 'ema': this run was trained without training.ema"):
        pplvm.Run.load(tmp_path / "run", weights="ema")
    assert pplvm.load(tmp_path / "run").weights == "raw"
    assert main(["sample", str(tmp_path / "run"), "-n", "2", "--out", str(tmp_path / "s.npy"), "--weights", "ema"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pplvm: error: --weights ema: this run was trained without training.ema, so it has no EMA weights; use "
        "'raw' (what it is evaluated and sampled with by default)"
    ]
