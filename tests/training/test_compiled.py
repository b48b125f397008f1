"""The compiled SVI step equals Pyro's: on every contract case the traced graph's loss and
gradients equal the objective's own on the same random draws (enumerated mixtures, HMMs and
graphs, flows and user models with discrete locals included: none falls back), a fit with the
compiled step ends where a plain fit ends, and what cannot be traced falls back with one log
line."""

from __future__ import annotations

import logging

import pyro
import pytest
import torch
from cases import CASES

import pplvm
from pplvm.objectives import OBJECTIVES, SVIObjective, make_update_rule
from pplvm.run import _fit_input
from pplvm.training.compiled import CompiledSVIStep, _no_host_reads

#: the contract cases trained by an SVI step (objectives with rules of their own, e.g. EM or a
#: GAN's two optimisers, are not Pyro objectives to trace)
SVI_CASES = [
    c for c in CASES if issubclass(OBJECTIVES[c.values[0].get("objective", {}).get("name", "elbo")], SVIObjective)
]


def _rule(card, mode="trace"):
    card = pplvm.card_from_dict(card) if isinstance(card, dict) else card
    run = pplvm.Run.from_card(card)
    rule = make_update_rule(run.model, run.guide, card)
    assert isinstance(rule, CompiledSVIStep)
    rule.mode = mode
    train = _fit_input(run.traits, run.dataset.train)
    batch = train[: card.training.batch_size or len(train)]
    rule.setup(batch, len(train))
    return run, rule, batch, len(train)


#: the one contract case that cannot be traced: its user model's prior was built (at
#: ``__init__``) with Pyro's validation on, so it checks its support at every step, on the host
UNTRACEABLE = {"user-ppca-class-amortized-minibatch"}


@pytest.mark.parametrize("card", SVI_CASES)
def test_the_traced_step_gives_the_objectives_loss_and_gradients(card, caplog, request):
    run, rule, batch, n = _rule(card)
    with pyro.validation_enabled(False), caplog.at_level(logging.INFO, logger="pplvm"):
        pyro.set_rng_seed(7)
        if request.node.callspec.id in UNTRACEABLE:
            # the rule says so once and trains with Pyro's own step, exact by construction
            with pytest.raises(RuntimeError, match="no compiled graph"):
                rule.loss_and_grads(batch, n)
            assert "training.compile = 'trace': running the plain Pyro step" in caplog.text
            return
        loss, grads = rule.loss_and_grads(batch, n)  # raises where the step fell back
        assert rule.fallback is None and rule._graphs
        pyro.set_rng_seed(7)  # the same draws for the plain objective
        ref = rule.loss_module(batch, num_data=n)
        ref_grads = torch.autograd.grad(ref, rule._params, allow_unused=True)
    assert "runs as a traced graph" in caplog.text
    # the graph runs the objective's own operations in the same order: float32 rounding at most
    torch.testing.assert_close(loss, ref.detach())
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r)


def test_a_fit_with_the_compiled_step_ends_where_a_plain_fit_ends():
    card = {
        "name": "v",
        "model": {"family": "vae", "latent_dim": 3, "hidden": [16]},
        "guide": {"kind": "amortized"},
        "objective": {"name": "iwae", "num_particles": 3},
        "data": {"source": "digits", "binarize": "dynamic"},
        "training": {"epochs": 2, "batch_size": 512, "lr": 0.01, "progress": False, "compile": "off"},
        "evaluation": {"draws": 5, "chains": 2},
    }
    plain = pplvm.fit(card)
    traced = pplvm.fit(card, overrides={"training.compile": "trace"})
    assert isinstance(traced.trainer.rule, CompiledSVIStep) and traced.trainer.rule._graphs
    for k, v in plain.guide.state_dict().items():
        torch.testing.assert_close(traced.guide.state_dict()[k], v)
    assert traced.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"], rel=1e-5)


def test_a_per_step_schedule_runs_the_plain_step():
    card = dict(CASES[2].values[0])
    card["objective"] = {"name": "elbo", "kl_warmup_epochs": 2.0}
    _, rule, _, _ = _rule(card)
    assert "KL annealing" in rule.fallback


def _host_read(x):
    """A user model that reads a latent's value on the host (a Python branch on it)."""
    mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    scale = 1.0 if bool((mu > -1e9).all()) else 2.0  # the host read: line HOST_READ_LINE
    with pyro.plate("data", len(x)):
        pyro.sample("obs", pyro.distributions.Normal(mu, scale).to_event(1), obs=x)


HOST_READ_LINE = _host_read.__code__.co_firstlineno + 3


def test_an_untraceable_model_is_named_in_one_whole_line(caplog):
    """The fallback's log line states its reason whole (it was once cut at 200 characters,
    mid-sentence) and names the line of the user's code that read a value on the host."""
    card = {
        "model": {"family": "pyro"},
        "guide": {"kind": "AutoNormal"},
        "objective": {"name": "elbo"},
        "data": {"source": "file", "path": "unused.npy"},
        "training": {"epochs": 3, "progress": False, "compile": "trace"},
    }
    with caplog.at_level(logging.WARNING, logger="pplvm"):
        pplvm.fit(card, data=torch.randn(40, 2).numpy(), model=_host_read)
    (line,) = [r.getMessage() for r in caplog.records if "training.compile" in r.getMessage()]
    assert "\n" not in line and line.endswith(f"test_compiled.py:{HOST_READ_LINE})"), line
    assert "reads a tensor's value on the host (float(t), t.item(), a Python `if` on a tensor)" in line


@pytest.mark.parametrize("mode, level", [("auto", logging.INFO), ("trace", logging.WARNING)])
def test_an_untraceable_objective_falls_back_in_one_plain_line(caplog, mode, level):
    """A model that checks a value on the host cannot be traced: under "auto" (trace where it
    can) the plain step runs without a word above INFO; asked for "trace", one warning names
    the reason in pplvm's words, not torch's truncated error."""
    card = next(p.values[0] for p in CASES if p.id in UNTRACEABLE)
    run, rule, batch, n = _rule(card, mode)
    with pyro.validation_enabled(False), caplog.at_level(logging.DEBUG, logger="pplvm"):
        with pytest.raises(RuntimeError, match="no compiled graph"):
            rule.loss_and_grads(batch, n)
    [record] = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert record.levelno == level
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith(f"training.compile = {mode!r}: running the plain Pyro step: the step's structure")


def test_hmm_minibatches_of_unequal_lengths_share_one_graph_equal_to_pyros_step():
    """Sequences of unequal lengths are padded to one length and masked: minibatches whose
    longest sequences differ run one traced graph, and on each the graph's loss and gradients
    equal Pyro's on the same draws (oracle)."""
    card = next(p.values[0] for p in CASES if p.id == "hmm-gaussian-meanfield-minibatch")
    run, rule, _, n = _rule(card)
    train = _fit_input(run.traits, run.dataset.train)
    batches = [train[i : i + 4] for i in range(0, n - 3, 4)]
    assert len({int(b.lengths.max()) for b in batches}) > 1
    with pyro.validation_enabled(False):
        for b in batches:
            pyro.set_rng_seed(3)
            loss, grads = rule.loss_and_grads(b, n)
            pyro.set_rng_seed(3)
            ref = rule.loss_module(b, num_data=n)
            torch.testing.assert_close(loss, ref.detach())
            for g, r in zip(grads, torch.autograd.grad(ref, rule._params, allow_unused=True)):
                torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r)
    assert rule.fallback is None and len(rule._graphs) == 1


def test_an_enumerated_value_of_probability_zero_is_traced_as_pyro_masks_it():
    """TraceEnum_ELBO skips the terms of enumerated values with probability 0 (their cost is
    infinite) by a branch on the values; the traced form selects instead: the same loss and
    gradients as Pyro's masked sum (oracle), from a graph."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.tensor([0.3, -1.2, 2.0])

    def model(loc, probs):
        with pyro.plate("data", 3):
            c = pyro.sample("c", pyro.distributions.Categorical(torch.tensor([0.5, 0.5, 0.0])))
            pyro.sample("x", pyro.distributions.Normal(loc[c], 1.0), obs=x)

    def guide(loc, probs):  # q(c = 2) = 0: an infinite cost Pyro's mask drops
        with pyro.plate("data", 3):
            pyro.sample("c", pyro.distributions.Categorical(probs), infer={"enumerate": "parallel"})

    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)

    def loss_and_grads(loc, raw):
        probs = torch.cat([raw.softmax(-1), torch.zeros(3, 1)], -1)
        loss = elbo.differentiable_loss(model, guide, loc, probs)
        return [loss, *torch.autograd.grad(loss, (loc, raw))]

    loc, raw = torch.tensor([-1.0, 1.0, 0.0], requires_grad=True), torch.randn(3, 2, requires_grad=True)
    with pyro.validation_enabled(False):
        expected = loss_and_grads(loc, raw)
        with _no_host_reads():
            graph = make_fx(loss_and_grads)(loc, raw)
    assert torch.isfinite(expected[0])
    for got, want in zip(graph(loc, raw), expected):
        torch.testing.assert_close(got, want)
