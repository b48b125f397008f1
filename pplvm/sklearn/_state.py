"""A fitted :class:`~pplvm.Run` as plain state and back, for pickling an estimator: what a run
directory keeps (the card as a dict, the model's and guide's weights, the standardising
transform, the training rows the guide is built on) without writing one. The run comes back
through the same path as :meth:`pplvm.Run.load` (``pplvm.facade.build.assemble``)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import card_from_dict, card_to_dict
from ..data import Standardize
from ..facade.build import _fit_input, _to_state, assemble, seen_rows
from ..run import Run
from ..training.devices import resolve_device


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def run_state(run: Run) -> dict[str, Any]:
    """Plain state of a fitted run (tensors on the host)."""
    return {
        "card": card_to_dict(run.card),
        "dim": run.model.dim,
        "prototype": _to_state(_fit_input(run.traits, seen_rows(run.dataset, run.seed))),
        "num_train": len(run.dataset.train),
        "model": _cpu(run.model.state_dict()),
        "guide": _cpu(run.guide.state_dict()),
        "transform": run.transform.state_dict(),
        "history": run.history,
        "seed": run.seed,
    }


def run_from_state(state: dict[str, Any]) -> Run:
    """The run :func:`run_state` describes, on its card's device (the CPU where that is missing).
    Its training data are not kept: ``run.dataset`` says so, as for a run fitted from Python."""
    card = card_from_dict(state["card"])
    checkpoint = {
        "extras": {"prototype": state["prototype"], "num_train": state["num_train"]},
        "model": state["model"],
        "guide": state["guide"],
    }
    device = resolve_device(card.training.device, cpu_fallback=True)
    model, guide = assemble(card, state["dim"], device, checkpoint=checkpoint)
    run = Run(card, model, guide, Standardize(**state["transform"]), None, None, checked=True)
    run.history, run.seed, run.from_python = state["history"], state["seed"], True
    return run
