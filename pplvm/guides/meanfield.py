"""``meanfield``: a mean-field normal over the globals (AutoNormal) and, for continuous local
latents, free per-datum normals q(z_n) over the training data (:class:`~.local.MeanFieldLocal`)."""

from __future__ import annotations

from typing import Any

import torch

from ._local import LocalConfig, local_refusal
from .autoguides import AUTOGUIDES, build_autoguide, continuous_locals, globals_guide, globals_only, start
from .base import Guide, GuideTraits
from .local import MeanFieldLocal


class MeanField(Guide):
    """Mean-field normal over the globals (AutoNormal) and, for continuous local latents, free per-datum normals
    q(z_n) over the training data."""

    names = ("meanfield",)
    Config = LocalConfig

    def refusal(self, model: Any) -> str | None:
        if not continuous_locals(model):
            return globals_only(model, "guide.kind = 'meanfield'")
        why = local_refusal(model, "the per-datum normals")
        if why is None and not model.indexed_rows:
            why = (
                "its free q(z_n) per training datum needs batches that carry their rows (Batch.index), "
                "which this family does not read"
            )
        return why

    def traits(self, model: Any) -> GuideTraits:
        local = bool(continuous_locals(model))
        return GuideTraits(proposal=local, per_datum=local, point_estimate=self.config.globals == "AutoDelta")

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        c = self.config
        init = start(model, x, generator)
        if not continuous_locals(model):
            return build_autoguide(AUTOGUIDES[c.globals].pyro_class, model, init, c.init_scale, c.globals_options)
        globals_ = globals_guide(model, c.globals, init, c.init_scale, c.globals_options)
        return MeanFieldLocal(model, num_data or len(x), globals_, init_scale=c.init_scale)

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide if isinstance(guide, MeanFieldLocal) else guide
