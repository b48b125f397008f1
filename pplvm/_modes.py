"""Train and eval mode of the networks in a model and its guide.

Networks (dropout, batch normalisation, anything that reads ``Module.training``) run in
``.train()`` during training steps and in ``.eval()`` everywhere else: held-out evaluation,
log-likelihoods, sampling, posterior predictives, exports, plots, and the probes pplvm runs on
placeholder batches to read a model's shapes. So a datum's score does not depend on the batch it
is scored in, evaluation draws no dropout masks, and nothing but a training step moves a
BatchNorm's running statistics.

:func:`training` and :func:`evaluating` set the mode of some modules (and all their submodules)
for a block and give every submodule back the mode it had before, so they nest: the held-out
evaluation after an epoch leaves the networks in training mode for the next step.
:func:`evaluated` puts a run's (or the trainer's) model and guide in eval mode around a method.
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
