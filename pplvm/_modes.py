"""Train and eval mode of the networks in a model and its guide: the rule, and where it is applied.

**The rule.** Networks (dropout, batch normalisation, anything that reads ``Module.training``)
run in ``.train()`` during training steps and in ``.eval()`` everywhere else. So a datum's
score does not depend on the batch it is scored in, evaluation draws no dropout masks, and
nothing but a training step moves a BatchNorm's running statistics.

- ``.train()``: a training step, whatever its update rule (SVI, compiled SVI, EM, adversarial);
- ``.eval()``: the held-out evaluation after each epoch; every query of a
  :class:`~pplvm.run.Run` (log-likelihoods, posteriors, MAP states, samples, ``evaluate``, the
  arviz export, plots, the model's graph); building a run (the guide's first call on training
  rows, the compatibility checks, the probes that trace a model of your own on placeholder
  batches to read its shapes); the workflows (latent traversals, SBC).

**How.** :func:`training` and :func:`evaluating` set the mode of some modules, and of all
their submodules, for a block, and give every submodule back the flag it had before, so
they nest: the trainer holds the model and guide in :func:`training` for an epoch, and the
held-out evaluation inside it (:func:`evaluated`) switches them to eval and back.
:func:`evaluated` wraps a method of an object with ``model`` and ``guide`` attributes (a
run's queries, the trainer's held-out evaluation). Outside these blocks a network keeps
whatever flag it had: a freshly built ``torch.nn.Module`` is in train mode, and so is a
run's model after ``fit`` (epoch callbacks run outside the epoch's block too); pplvm's own
calls set the mode themselves, so call the run's methods rather than ``run.model`` directly.

**For a model of your own.** The modes reach the networks pplvm holds as modules: a
``PyroModule`` model or guide and every submodule of it. A model written as a function is
left alone (a network it closes over keeps its flag: make the model a ``PyroModule``).
Inside a block every submodule is set, one you froze in eval mode included; to keep a
network frozen during training, override its ``train(mode)`` to call
``super().train(False)``. A normalizing flow's ``batchnorm`` transform follows
``torch.is_grad_enabled()`` (batch statistics only while gradients flow), which agrees
with the rule: pplvm evaluates under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def evaluating(*modules: Any) -> Iterator[None]:
    """Run the block with ``modules`` in ``.eval()``; each submodule's previous mode is restored
    after it. Arguments that are not modules (a model written as a function) are left alone."""
    with _mode(False, modules):
        yield


@contextlib.contextmanager
def training(*modules: Any) -> Iterator[None]:
    """Run the block with ``modules`` in ``.train()``; each submodule's previous mode is restored
    after it (see :func:`evaluating`)."""
    with _mode(True, modules):
        yield


def evaluated(fn: F) -> F:
    """``fn(owner, ...)`` with ``owner.model`` and ``owner.guide`` in eval mode (restored after):
    for the queries of a run and the trainer's held-out evaluation."""

    @functools.wraps(fn)
    def wrapper(owner, *args, **kwargs):
        with evaluating(owner.model, owner.guide):
            return fn(owner, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _mode(train: bool, objects: tuple[Any, ...]) -> Iterator[None]:
    modules = [m for m in objects if isinstance(m, torch.nn.Module)]
    # every submodule's own flag (a model may hold a network frozen in eval mode on purpose)
    before = {id(sub): (sub, sub.training) for m in modules for sub in m.modules()}
    for m in modules:
        m.train(train)
    try:
        yield
    finally:
        for sub, flag in before.values():
            sub.training = flag
