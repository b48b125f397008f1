"""Budgets (``training.max_steps``, ``training.max_minutes``) and checkpoints inside an epoch:
a fit stops where its budget runs out, mid-epoch if need be, with a held-out evaluation and a
checkpoint, and its resume continues exactly — parameters, moving average, lr warm-up and
metrics equal an uninterrupted fit's bit for bit (one process, CPU: the same operations in the
same order)."""

from __future__ import annotations

import json
import types

import pytest
import torch

import pplvm
from pplvm.training import _budget
from pplvm.training.checkpoint import load_checkpoint

# 64 training rows in batches of 16: 4 steps an epoch
CARD = {
    "name": "budget",
    "model": {"family": "vae", "latent_dim": 2, "hidden": [8], "likelihood": "gaussian"},
    "guide": {"kind": "amortized"},
    "objective": {"name": "elbo"},
    "data": {"source": "moons", "n": 80, "standardize": True, "valid_fraction": 0.2, "test_fraction": 0.0},
    "training": {
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.01,
        "progress": False,
        "ema": 0.9,
        "ema_warmup": True,
        "lr_warmup_steps": 12,
        "checkpoint_every": 1,
    },
    "evaluation": {"export": False, "samples": 4},
}


@pytest.fixture(autouse=True)
def no_artifacts(monkeypatch):
    """Plots and the summary file are not what these tests check (they cost more than the fits)."""
    monkeypatch.setattr(pplvm.Run, "write_artifacts", lambda run: None)


def card(**training):
    return {**CARD, "training": {**CARD["training"], **training}}


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_checkpoints(a, b):
    assert a["trainer"] == b["trainer"]
    for key in ("model", "guide", "rule", "ema"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_max_steps_stops_mid_epoch_and_the_resume_equals_the_uninterrupted_fit(tmp_path):
    full = pplvm.fit(card(), tmp_path / "full")
    cut = pplvm.fit(card(max_steps=6), tmp_path / "cut")  # two steps into epoch 2
    s = cut.trainer.state
    assert (s.step, s.epoch, s.position) == (6, 1, 2)
    assert s.stopped == "training.max_steps = 6 reached"
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["trainer"]["step"], saved["trainer"]["position"], saved["trainer"]["paused"]) == (6, 2, True)
    last = lines(tmp_path / "cut")[-1]  # the last held-out evaluation, for both weights
    assert last["partial"] and last["step"] == 6 and last["stopped"] == s.stopped
    assert {"valid_loss", "valid_loss_ema", "valid_log_likelihood_ema"} <= last.keys()
    assert "stopped: training.max_steps = 6 reached" in cut.summary_text()

    resumed = pplvm.Run.resume(tmp_path / "cut", max_steps=100)
    assert resumed.trainer.state.step == full.trainer.state.step == 12
    assert_same_checkpoints(
        load_checkpoint(tmp_path / "cut" / "checkpoint.pt"), load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    )
    assert lines(tmp_path / "cut") == lines(tmp_path / "full")  # the partial record gave way to epoch 2's
    assert resumed.history == full.history


def test_max_steps_counts_the_steps_before_a_resume(tmp_path):
    pplvm.fit(card(max_steps=4, ema=None), tmp_path / "run")  # stops at the end of epoch 1
    assert lines(tmp_path / "run")[-1]["stopped"] == "training.max_steps = 4 reached"
    again = pplvm.Run.resume(tmp_path / "run")  # the same budget: nothing left to train
    assert again.trainer.state.step == 4 and again.trainer.state.stopped == "training.max_steps = 4 reached"
    more = pplvm.Run.resume(tmp_path / "run", max_steps=6)
    assert more.trainer.state.step == 6 and more.trainer.state.position == 2
    stopped = lines(tmp_path / "run")
    assert [m["epoch"] for m in stopped] == [1, 2] and stopped[-1]["partial"]
    pplvm.Run.resume(tmp_path / "run")  # nothing to train: the stop's partial record stands
    assert lines(tmp_path / "run") == stopped and pplvm.load(tmp_path / "run").history == stopped
    pplvm.Run.resume(tmp_path / "run", max_steps=7)  # a record of epoch 2 in its place
    assert [(m["epoch"], m["step"]) for m in lines(tmp_path / "run")] == [(1, 4), (2, 7)]


def test_max_minutes_stops_after_the_first_step_that_ends_past_the_budget(tmp_path, monkeypatch):
    """Budget accounting on a clock that each step moves 0.1 minute on: a budget of 0.35
    minute runs out after the 4th step of this invocation, and a resume has its own budget."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(_budget, "time", types.SimpleNamespace(monotonic=lambda: clock.now))

    def ticking(run):
        step = run.rule.step

        def tick(*args, **kwargs):
            clock.now += 6.0
            return step(*args, **kwargs)

        run.rule.step = tick
        return run

    run = ticking(pplvm.Run.from_card(card(max_minutes=0.35, ema=None, epochs=50, compile="off")))
    run.fit(tmp_path / "run")
    assert run.trainer.state.step == 4 < 50 * 4
    assert run.trainer.state.stopped.startswith("training.max_minutes = 0.35 reached (24.0 s")
    assert "valid_loss" in lines(tmp_path / "run")[-1]  # the epoch's evaluation was the last one
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["trainer"]["step"] == 4

    clock.now += 1e6  # the time before a resume does not count against its budget
    monkeypatch.setattr(pplvm.Run, "from_card", classmethod(lambda cls, *a, **k: ticking(from_card(cls, *a, **k))))
    resumed = pplvm.Run.resume(tmp_path / "run")
    assert resumed.trainer.state.step == 8


from_card = pplvm.Run.from_card.__func__


def test_max_minutes_on_the_clock_stops_before_the_epochs_run_out(tmp_path):
    run = pplvm.fit(card(max_minutes=0.02, epochs=10**6, ema=None, compile="off"), tmp_path / "run")
    s = run.trainer.state
    assert s.stopped.startswith("training.max_minutes = 0.02 reached") and s.epoch < 10**6
    assert run.trainer.budget.seconds() >= 1.2  # it ran its budget out
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["trainer"]
    assert (saved["step"], saved["paused"]) == (s.step, True)
    assert "valid_loss" in lines(tmp_path / "run")[-1]


@pytest.mark.parametrize("at", [6, 9])  # inside epoch 2, inside epoch 3
def test_a_fit_killed_inside_an_epoch_resumes_from_its_checkpoint_there(tmp_path, monkeypatch, at):
    """checkpoint_seconds = 0 with no checkpoint_every: a checkpoint after every step; a crash in
    step ``at`` leaves step ``at - 1``'s, inside its epoch, and the resume equals the full fit."""
    timed = card(checkpoint_every=None, checkpoint_seconds=0.0)
    pplvm.fit(timed, tmp_path / "full")
    run = pplvm.Run.from_card(timed)
    step = run.rule.step

    def crash(*args, **kwargs):
        if run.trainer.state.step + 1 == at:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    run.rule.step = crash
    with pytest.raises(KeyboardInterrupt):
        run.fit(tmp_path / "cut")
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["trainer"]
    assert (saved["step"], saved["position"]) == (at - 1, (at - 1) % 4)
    pplvm.Run.resume(tmp_path / "cut")
    assert_same_checkpoints(
        load_checkpoint(tmp_path / "cut" / "checkpoint.pt"), load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    )
    assert lines(tmp_path / "cut") == lines(tmp_path / "full")
