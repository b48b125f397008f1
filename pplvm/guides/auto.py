"""``auto``: the first guide kind that serves the model and the card's objective, decided when
the run is built and written into its card (:func:`pplvm.objectives.settle`)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import IncompatibleError
from .base import Guide


class Auto(Guide):
    """The first guide that serves the model and the objective (decided when the run is built, recorded in its card).

    Guides are tried in registration order (``amortized``, ``exact``, ``meanfield``, ``map``,
    ``lowrank``, ``flow``, ``forward``, ``none``, Pyro's autoguides, then your model's own);
    the first whose needs the model meets and whose traits the objective accepts is written
    into the run's ``card.toml``, so a resumed or loaded run builds the same guide. It builds
    nothing itself.
    """

    names = ("auto",)

    def refusal(self, model: Any) -> str | None:
        return None

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        raise IncompatibleError("guide.kind = 'auto' is decided when a run is built (pplvm.objectives.settle)")
