"""Trainer behaviour a user relies on: identical seeded runs, resume == uninterrupted,
minibatch scaling, gradient clipping, LR schedule, early stopping, a non-finite loss stopping
with the last good checkpoint kept, and atomic checkpoint writes."""

from __future__ import annotations

import json
import os

import pyro
import pytest
import torch

import pplvm
from pplvm.training import checkpoint as ckpt_mod

CARD = {
    "name": "t",
    "model": {"family": "gmm", "components": 3},
    "guide": {"kind": "meanfield"},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 200, "dim": 2, "components": 3},
    "training": {"epochs": 6, "batch_size": 50, "lr": 0.05, "progress": False, "patience": 50, "checkpoint_every": 1},
    "evaluation": {"draws": 5, "chains": 2},
}


def state(run):
    return {k: v.clone() for k, v in run.guide.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_same_seed_same_run_and_other_seed_differs():
    a = pplvm.fit(CARD)
    b = pplvm.fit(CARD)
    c = pplvm.fit(CARD, overrides=["training.seed=1"])
    assert_same(state(a), state(b))
    assert any(not torch.equal(state(a)[k], state(c)[k]) for k in state(a))


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    full = pplvm.fit(CARD, tmp_path / "full")

    def crash_at_epoch_4(trainer, metrics):
        if metrics["epoch"] == 4:
            raise Interrupt

    run = pplvm.Run.from_card(CARD)
    with pytest.raises(Interrupt):
        run.fit(tmp_path / "cut", callbacks=[crash_at_epoch_4])
    # epoch 4's checkpoint was written before the crash; lose it to resume from epoch 3 as a
    # crash in mid-epoch 4 would
    assert pplvm.training.checkpoint.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["trainer"]["epoch"] == 4
    resumed = pplvm.Run.resume(tmp_path / "cut")
    assert_same(state(resumed), state(full))
    assert resumed.history == full.history
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 7))


def test_resume_with_more_epochs_continues(tmp_path):
    pplvm.fit(CARD, tmp_path / "r")
    run = pplvm.Run.resume(tmp_path / "r", epochs=8)
    assert run.history[-1]["epoch"] == 8 and len(run.history) == 8
    assert pplvm.load_card(tmp_path / "r" / "card.toml").training.epochs == 8


def test_minibatch_losses_average_to_the_full_batch_loss():
    """With the data plate's subsample scaling, the mean of the losses over a partition into
    equal batches equals the full-data loss exactly (MAP globals: no sampling noise)."""
    run = pplvm.Run.from_card({**CARD, "guide": {"kind": "map"}})
    x, n = run.dataset.train, len(run.dataset.train)
    elbo = pplvm.make_objective(run.model, run.card.objective)
    full = elbo.loss(run.model, run.guide, x, num_data=n)
    parts = [elbo.loss(run.model, run.guide, b, num_data=n) for b in x.split(n // 4)]
    assert len(parts) == 4
    assert sum(parts) / 4 == pytest.approx(full, rel=1e-5)


def test_gradient_clipping_bounds_the_step():
    card = {
        **CARD,
        "guide": {"kind": "map"},
        "training": {
            **CARD["training"],
            "optimizer": "sgd",
            "lr": 1.0,
            "clip_norm": 1e-3,
            "epochs": 1,
            "batch_size": None,
        },
    }
    run = pplvm.Run.from_card(card)
    before = torch.cat([p.detach().flatten().clone() for p in run.guide.parameters()])
    run.fit()
    after = torch.cat([p.detach().flatten() for p in run.guide.parameters()])
    # one full-batch SGD step of lr 1 with the gradient norm clipped to 1e-3
    assert (after - before).norm() <= 1e-3 * (1 + 1e-4)
    assert (after - before).norm() > 0


def test_cosine_schedule_reaches_its_final_ratio():
    card = {**CARD, "training": {**CARD["training"], "lr_schedule": "cosine", "lr_final_ratio": 0.1, "epochs": 10}}
    run = pplvm.fit(card)
    lrs = [h["lr"] for h in run.history]
    assert lrs[0] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.005 + 0.5 * 0.045 * (1 + torch.cos(torch.tensor(0.9 * torch.pi)).item()))


def test_early_stopping_stops_and_restores_the_best_parameters(tmp_path):
    card = {**CARD, "training": {**CARD["training"], "patience": 2, "epochs": 200, "lr": 0.2}}
    run = pplvm.fit(card, tmp_path / "es")
    st = run.trainer.state
    assert st.stopped.startswith("early stopping")
    assert st.epoch == st.best_epoch + 2 < 200
    best = pplvm.training.checkpoint.load_checkpoint(tmp_path / "es" / "checkpoint.pt")["best"]
    assert_same(state(run), best["guide"])  # the run now holds the best parameters
    # the GMM's likelihood is exact, so early stopping follows the held-out log-likelihood
    valid = [h["valid_log_likelihood"] for h in run.history]
    assert max(valid) == pytest.approx(-st.best)
    assert valid.index(max(valid)) + 1 == st.best_epoch


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro says so itself
@pytest.mark.parametrize("validation", [True, False])
def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, validation):
    """Divergence shows as a NaN loss (validation off) or as Pyro refusing NaN parameters
    (validation on); either way: one TrainingError, the last good checkpoint kept."""
    pyro.enable_validation(validation)

    def poison_after_epoch_2(trainer, metrics):
        if metrics["epoch"] == 2:
            with torch.no_grad():
                next(trainer.guide.parameters()).fill_(float("nan"))

    run = pplvm.Run.from_card(CARD)
    with pytest.raises(pplvm.TrainingError, match=r"(loss became nan|non-finite) at epoch 3.*epoch 2\) is kept"):
        run.fit(tmp_path / "nan", callbacks=[poison_after_epoch_2])
    kept = pplvm.training.checkpoint.load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert kept["trainer"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in kept["guide"].values())
    assert torch.isfinite(pplvm.load(tmp_path / "nan").log_likelihood(run.dataset.valid)).all()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt_mod.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt_mod.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert ckpt_mod.load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_checkpoint_is_loaded_without_unpickling_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"format": ckpt_mod.FORMAT, "x": Evil()}))
    with pytest.raises(pplvm.RunDirError, match="not a readable pplvm checkpoint"):
        ckpt_mod.load_checkpoint(path)


@pytest.mark.parametrize("mode, expected", [("first_step", [True, False, False, False]), ("every_step", [True] * 4)])
def test_pyro_validation_on_the_first_step_or_every_step(monkeypatch, mode, expected):
    from pyro.distributions.util import is_validation_enabled

    from pplvm.families import GaussianMixture

    card = {**CARD, "training": {**CARD["training"], "epochs": 2, "batch_size": 80, "pyro_validation": mode}}
    run = pplvm.Run.from_card(card)  # 160 training rows: 2 steps per epoch
    seen, forward = [], GaussianMixture.forward

    def spy(self, *args, **kwargs):
        seen.append(is_validation_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GaussianMixture, "forward", spy)
    run.card = pplvm.card_from_dict(pplvm.card_to_dict(run.card), {"training.eval_every": 100})
    run.fit()
    # the model runs once per training step (the held-out pass at the last epoch runs after them)
    assert seen[:4] == expected


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
def test_a_step_that_leaves_parameters_infinite_stops_with_the_last_good_checkpoint(tmp_path):
    """A huge learning rate can give a finite loss and then non-finite parameters; the loop
    checks the parameters after every epoch, before evaluating or checkpointing them. In the
    first epoch a fit keeps nothing (no run directory); later, its last good checkpoint."""
    card = {
        **CARD,
        "guide": {"kind": "map"},
        "training": {**CARD["training"], "lr": 1e6, "optimizer": "sgd", "batch_size": None},
    }
    with pytest.raises(
        pplvm.TrainingError,
        match=r"parameters (became non-finite|left the model.s valid range).* at epoch 1\b"
        r".*nothing was kept \(the fit failed in its first epoch\)",
    ):
        pplvm.fit(card, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    def diverge(trainer, metrics):  # after a good first epoch, a step that breaks the parameters
        trainer.rule.optimizer.param_groups[0]["lr"] = 1e6

    run = pplvm.Run.from_card({**card, "training": {**card["training"], "lr": 1e-3}})
    with pytest.raises(pplvm.TrainingError, match=r"at epoch 2\b.*the last good checkpoint \(epoch 1\) is kept"):
        run.fit(tmp_path / "run", callbacks=[diverge])
    kept = pplvm.training.checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert kept["trainer"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["guide"].values())


def test_checkpoints_do_not_grow_with_the_epochs_done(tmp_path):
    """The metric history lives in metrics.jsonl, so a checkpoint's size (and the time to write
    it) does not grow with training; resume and load read the history back from the file."""
    sizes = {}
    for epochs in (2, 12):
        card = {**CARD, "training": {**CARD["training"], "epochs": epochs, "patience": None}}
        run = pplvm.fit(card, tmp_path / str(epochs))
        ckpt = tmp_path / str(epochs) / "checkpoint.pt"
        sizes[epochs] = ckpt.stat().st_size
        assert "history" not in pplvm.training.checkpoint.load_checkpoint(ckpt)["trainer"]
        assert pplvm.load(tmp_path / str(epochs)).history == run.history
        assert len(run.history) == epochs
    assert abs(sizes[12] - sizes[2]) < 64, sizes  # equal up to the pickled integers' widths


def test_checkpoints_by_time_write_the_first_and_last_epochs(tmp_path, monkeypatch):
    from pplvm.training.trainer import Trainer

    saved = []
    save = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: (saved.append(self.state.epoch), save(self))[1])
    card = {**CARD, "training": {**CARD["training"], "checkpoint_every": None, "checkpoint_seconds": 1e9}}
    pplvm.fit(card, tmp_path / "run")
    assert saved == [0, 6]  # before the first step, then only the last epoch (the interval never passed)
    saved.clear()
    monkeypatch.setattr(
        Trainer, "save", lambda self: (saved.append((self.state.epoch, self.state.position)), save(self))[1]
    )
    pplvm.fit({**card, "training": {**card["training"], "checkpoint_seconds": 0.0}}, tmp_path / "run2")
    # the interval passes at every step: inside the epochs too (4 steps each), and at their ends
    assert saved == [(0, 0)] + [(e, i) if i else (e + 1, 0) for e in range(6) for i in (1, 2, 3, 0)]


def test_resume_refuses_a_metric_history_shorter_than_the_checkpoint(tmp_path):
    pplvm.fit(CARD, tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(pplvm.RunDirError, match=r"metrics.jsonl' has 0 epochs of metrics but the checkpoint has 6"):
        pplvm.Run.resume(tmp_path / "run", epochs=8)


def test_a_device_spec_that_is_not_one_is_refused_by_name():
    """``training.device`` itself is read by :func:`pplvm.training.devices.resolve_device`
    (tests/training/test_devices.py); the card refuses what is not a device."""
    with pytest.raises(pplvm.CardError, match="training.device"):
        pplvm.card_from_dict({**CARD, "training": {**CARD["training"], "device": "tpu"}})


def test_a_model_not_finite_before_any_update_is_not_blamed_on_the_learning_rate():
    """Non-finite at the first step, before any update: the message names the parameters that
    are non-finite and does not advise a smaller learning rate (no step was taken)."""
    run = pplvm.Run.from_card(CARD)
    setup = run.rule.setup

    def poisoned(*args):
        setup(*args)
        with torch.no_grad():
            dict(run.guide.named_parameters())["locs.locs_unconstrained"].fill_(float("nan"))

    run.rule.setup = poisoned
    with pytest.raises(pplvm.TrainingError) as info:
        run.fit()
    message = str(info.value)
    assert "at epoch 1, step 1" in message and "non-finite parameters: guide.locs.locs_unconstrained" in message
    assert "learning rate is not the cause" in message and "smaller training.lr" not in message


def test_the_gradient_norm_is_logged_before_clipping_and_the_step_clips():
    """``grad_norm`` (an epoch's last step) is the gradients' 2-norm before clipping: for
    -log Π_n N(x_n | loc, I) it is N ‖loc - x̄‖; the step itself uses gradients clipped to
    ``training.clip_norm``."""
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO
    from pyro.nn import PyroModule, PyroParam

    from pplvm.sections import TrainingConfig
    from pplvm.training.rules import SVIStep

    class Mean(PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = PyroParam(torch.tensor([3.0, -2.0]))

        def forward(self, x, num_data=None):
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Normal(self.loc, 1.0).to_event(1), obs=x)

    class NoLatents(PyroModule):
        def forward(self, x, num_data=None):
            return None

    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    model = Mean()
    rule = SVIStep(model, NoLatents(), Trace_ELBO(), TrainingConfig(clip_norm=1.0, lr=0.1, progress=False))
    rule.setup(x, len(x))
    expected = len(x) * (model.loc.detach() - x.mean(0)).norm()
    rule.step(x, len(x), 0.0)
    assert float(rule.grad_norm) == pytest.approx(float(expected), rel=1e-5)
    assert float(model.loc.grad.norm()) == pytest.approx(1.0, rel=1e-5)  # clipped for the update
    assert rule.end_epoch(1)["grad_norm"] == pytest.approx(float(expected), rel=1e-5)
