"""What ``training.compile = "auto"`` (the default) runs: Pyro's plain step for a fit too short
for a trace to pay, the traced graph from the second step otherwise, inductor where its
expected saving pays for its compile time and it proves faster — each choice said in one log
line, kept in checkpoints, and the optimiser fused."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch

import pplvm
from pplvm.objectives import make_update_rule
from pplvm.run import _fit_input
from pplvm.training import compiled
from pplvm.training.compiled import AUTO_MIN_STEPS, TIMED_STEPS, CompiledSVIStep

CARD = {
    "name": "v",
    "model": {"family": "vae", "latent_dim": 3, "hidden": [8]},
    "guide": {"kind": "amortized"},
    "objective": {"name": "iwae", "num_particles": 2},
    "data": {"source": "digits", "binarize": "dynamic"},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.01, "progress": False},
}


def _rule(**training):
    card = pplvm.card_from_dict({**CARD, "training": {**CARD["training"], **training}})
    run = pplvm.Run.from_card(card)
    rule = make_update_rule(run.model, run.guide, card)
    train = _fit_input(run.traits, run.dataset.train)
    batch = train[: card.training.batch_size]
    rule.setup(batch, len(train))
    return rule, batch, len(train)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("training.compile")]


def _steps(rule, batch, n, count):
    with pyro.validation_enabled(False):
        for _ in range(count):
            rule.step(batch, n, 0.0)


def test_a_short_fit_runs_the_plain_step_and_says_why_once(caplog):
    rule, batch, n = _rule()
    assert isinstance(rule, CompiledSVIStep) and rule.mode == "auto"
    rule.plan(AUTO_MIN_STEPS - 1)
    with caplog.at_level(logging.INFO, logger="pplvm"):
        _steps(rule, batch, n, 3)
    assert not rule._graphs
    [line] = _messages(caplog)
    assert f"this fit has {AUTO_MIN_STEPS - 1} steps, too few for a trace to pay back" in line
    assert "too few for a trace to pay" in rule.describe()


def test_a_long_fit_traces_from_the_second_step_and_keeps_the_plain_steps_numbers(caplog):
    traced, batch, n = _rule()
    plain, _, _ = _rule(compile="off")
    traced.plan(10_000)
    with caplog.at_level(logging.INFO, logger="pplvm"):
        for rule in (traced, plain):
            pyro.set_rng_seed(3)
            _steps(rule, batch, n, 4)
    assert traced._graphs and "the step runs as a traced graph from step 1" in _messages(caplog)[0]
    assert traced.describe() == "a traced graph (training.compile = 'auto')"
    for a, b in zip(traced._params, plain.loss_module.parameters()):
        torch.testing.assert_close(a, b)


def test_inductor_is_not_compiled_where_it_cannot_pay_back(caplog, monkeypatch):
    rule, batch, n = _rule()
    rule.plan(AUTO_MIN_STEPS)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled a step that cannot pay back"))
    with caplog.at_level(logging.INFO, logger="pplvm"):
        _steps(rule, batch, n, TIMED_STEPS + 2)
    assert rule.state_dict()["inductor"] is False
    assert "would not pay back over the" in _messages(caplog)[-1]


def test_where_inductor_cannot_compile_the_traced_graph_runs_on_with_one_line(caplog, monkeypatch):
    """A machine without a C++ compiler: the compile fails on its first call."""

    def no_compiler(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return call

    rule, batch, n = _rule()
    rule.plan(10**9)
    monkeypatch.setattr(compiled, "inductor_seconds", lambda operations: 0.0)
    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.INFO, logger="pplvm"):
        _steps(rule, batch, n, TIMED_STEPS + 3)
    assert rule.state_dict()["inductor"] is False and rule.describe().startswith("a traced graph")
    line = _messages(caplog)[-1]
    assert line == (
        "training.compile = 'auto': inductor cannot compile the step (InvalidCxxCompiler: No working C++ "
        "compiler found): the traced graph runs"
    )


def test_the_choice_of_inductor_travels_in_the_checkpoint():
    rule, batch, n = _rule()
    rule._inductor = True
    again, _, _ = _rule()
    again.load_state_dict(rule.state_dict())
    assert again._inductor is True and again.state_dict()["inductor"] is True


def test_the_optimiser_is_fused():
    rule, _, _ = _rule()
    assert rule.optimizer.defaults["fused"] is True


@pytest.mark.slow
def test_inductor_under_auto_steps_as_the_traced_graph_does(monkeypatch):
    """Auto compiles with inductor where told it pays (compile time taken as 0), and the
    compiled step's loss and gradients equal the traced graph's on the same draws (to float
    rounding: inductor fuses operations)."""
    rule, batch, n = _rule()
    rule.plan(10**9)
    monkeypatch.setattr(compiled, "inductor_seconds", lambda operations: 0.0)
    _steps(rule, batch, n, 3 * TIMED_STEPS + 2)
    assert rule.state_dict()["inductor"] is not None
    key = rule._signature(batch, n)
    with torch.no_grad(), pyro.validation_enabled(False):
        pyro.set_rng_seed(5)
        fused = rule._with_inductor(rule._graphs[key], batch)(rule._params, (batch,))
        pyro.set_rng_seed(5)
        traced = rule._graphs[key](rule._params, (batch,))
    for a, b in zip(fused, traced):  # gradients of a full-data loss (N = 1437): large numbers
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))


@pytest.mark.parametrize("name, k", [("stl", 1), ("iwae_dreg", 5), ("iwae", 50), ("iwae_dreg", 50)])
def test_dreg_stl_and_iwae_50_run_traced_with_pyros_loss_and_gradients(name, k):
    """The gradient estimators that stop gradients through q's parameters (STL, DReG) and the
    50-particle bound trace like the plain ELBO: the graph's loss and gradients are the Pyro
    objective's on the same draws."""
    card = pplvm.card_from_dict({**CARD, "objective": {"name": name, "num_particles": k}})
    run = pplvm.Run.from_card(card)
    rule = make_update_rule(run.model, run.guide, card)
    rule.mode = "trace"
    train = _fit_input(run.traits, run.dataset.train)
    batch = train[:16]
    rule.setup(batch, len(train))
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(2)
        loss, grads = rule.loss_and_grads(batch, len(train))
        pyro.set_rng_seed(2)
        ref = rule.loss_module(batch, num_data=len(train))
        ref_grads = torch.autograd.grad(ref, rule._params, allow_unused=True)
    assert rule.fallback is None
    torch.testing.assert_close(loss, ref.detach())
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r)
