"""Train and eval mode (:mod:`pplvm._modes`): a block sets the mode of whole modules and gives
every submodule back its own previous mode, nested, on an error too, and leaves what is not a
module alone. What the facade and trainer run in which mode: tests/families/test_pyro_model.py."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from pplvm._modes import evaluated, evaluating, training


def network() -> nn.Sequential:
    """A network with one submodule frozen in eval mode (as a pretrained part may be)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    net[1].eval()
    return net


def modes(*modules: nn.Module) -> list[bool]:
    return [sub.training for m in modules for sub in m.modules()]


def test_evaluating_and_training_give_every_submodule_its_own_mode_back():
    net, other = network(), nn.Dropout(0.1).eval()
    before = modes(net, other)
    assert before == [True, True, False, True, False]
    with evaluating(net, other, print):  # a function among them is left alone
        assert not any(modes(net, other))
        with training(net):
            assert all(modes(net)) and not other.training
        assert not any(modes(net, other))
    assert modes(net, other) == before
    with pytest.raises(RuntimeError, match="inside"), training(other):
        assert other.training
        raise RuntimeError("inside")
    assert modes(net, other) == before


def test_evaluation_in_eval_mode_leaves_batchnorm_statistics_and_outputs_fixed():
    """In the block, Dropout is the identity and BatchNorm normalises with its running
    statistics: a row's output is the same alone as in a batch, and the statistics stay."""
    net = network()
    net[1].train()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    stats = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    with evaluating(net), torch.no_grad():
        torch.testing.assert_close(net(x[:1]), net(x)[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(net[1].running_mean, stats[0], rtol=0, atol=0)
    assert int(net[1].num_batches_tracked) == stats[1] and net.training


def test_evaluated_puts_the_owners_model_and_guide_in_eval_mode():
    owner = types.SimpleNamespace(model=network(), guide=nn.Dropout(0.2))

    @evaluated
    def query(run, scale):
        """A query."""
        return scale * sum(modes(run.model, run.guide))

    assert query(owner, 2) == 0 and query.__doc__ == "A query."
    assert owner.guide.training and modes(owner.model) == [True, True, False, True]
