"""The user's own guide over a traced Pyro model (:mod:`.pyro_model`, ``guide.kind = "custom"``),
wrapped to be scaled like the model in the data plate and checked once on a placeholder batch."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine

from .._modes import evaluating
from ..errors import CardError
from ._pyro_inputs import Caller
from ._pyro_trace import _PROBE_ROWS, _Holder, _ScaleDataPlate, _trace_once

if TYPE_CHECKING:
    from .pyro_model import PyroModel


class _CustomGuide(pyro.nn.PyroModule):
    """The user's guide, called on a batch as the model is (:mod:`._pyro_inputs`), scaled like
    the model in the data plate. Its point estimate of the globals (:meth:`median`) is the elementwise
    median of 101 draws; called without data it draws the globals only."""

    def __init__(self, model: PyroModel, guide: Any):
        super().__init__()
        self._model = (model,)
        if isinstance(guide, torch.nn.Module):
            self.holder = _Holder(guide)
        self._fn = (Caller.of(guide, "model.guide_target"),)

    def forward(self, x=None, num_data=None):
        model = self._model[0]
        if x is None:  # posterior draws of the globals need no data
            with poutine.block(hide_fn=lambda site: site["name"] not in model.global_sites):
                return self._fn[0](model.placeholder(1))
        batch = model.model_input(x)
        scale = (
            _ScaleDataPlate(model.plate_name, num_data / len(batch))
            if num_data not in (None, len(batch))
            else contextlib.nullcontext()
        )
        with scale:
            return self._fn[0](batch)

    def check(self) -> None:
        """Call the guide once on a placeholder batch: a CardError naming ``model.guide_target``
        if it fails or leaves a global latent of the model unguided."""
        model, label = self._model[0], "model.guide_target"
        x = model.example[torch.arange(_PROBE_ROWS[0]) % len(model.example)]
        self._fn[0].check(x)
        with evaluating(model):  # a guide method's networks live in the model
            trace = _trace_once(
                self,
                x,
                uses_param=f"{label}: the guide uses pyro.param; pplvm keeps parameters in "
                "modules: write it as a PyroModule with PyroParam attributes",
                failed=f"{label}: calling the guide on a placeholder batch failed",
            )
        if not isinstance(self._fn[0].fn, torch.nn.Module) and any(s["type"] == "param" for s in trace.nodes.values()):
            raise CardError(
                f"{label}: the guide uses pyro.param; pplvm keeps parameters in modules: write "
                "it as a PyroModule with PyroParam attributes"
            )
        missing = [k for k in model.global_sites + model.structure.continuous if k not in trace.nodes]
        if missing:
            raise CardError(f"{label}: the guide does not sample the model's latent site(s) {', '.join(missing)}")

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        names = self._model[0].global_sites
        if not names:  # nothing to draw
            return {}
        with poutine.seed(rng_seed=0):
            draws = [poutine.trace(self).get_trace() for _ in range(101)]
        return {k: torch.stack([t.nodes[k]["value"] for t in draws]).median(0).values for k in names}
