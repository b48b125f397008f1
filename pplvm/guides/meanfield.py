"""``meanfield``: a mean-field normal over the globals (AutoNormal) and, for continuous local
latents, free per-datum normals q(z_n) over the training data (:class:`~.local.MeanFieldLocal`).

Rows outside the training data have no q(z_n) of their own: before they are scored (held-out
log-likelihoods, ``evaluate``), a q(z_n) over them is fitted for ``guide.held_out_steps`` steps
of the ELBO with the globals fixed at their point estimate, then serves as the importance
sampler's proposal. Any proposal keeps the estimate of p(x_n | θ) unbiased (its log a lower
bound in expectation); the steps only lower its variance. Metrics say so
(``valid_q_fit_steps``, ``q_fit_steps``)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..data.base import Batch, indexed
from ._local import LocalConfig, local_refusal
from .autoguides import AUTOGUIDES, build_autoguide, continuous_locals, globals_guide, globals_only, start
from .base import Guide, GuideTraits
from .local import MeanFieldLocal


class MeanFieldConfig(LocalConfig):
    held_out_steps: int = Field(
        100, ge=1, description="ELBO steps of the q(z_n) fitted to rows outside the training data before scoring them"
    )
    held_out_lr: float = Field(0.1, gt=0, description="Adam learning rate of those steps")


class MeanField(Guide):
    r"""Mean-field normal over the globals (AutoNormal) and, for continuous local latents, free per-datum normals
    q(z_n) over the training data.

    **q.** :math:`q(\theta) = \prod_i \mathcal N(\theta_i; m_i, s_i^2)` in each global's
    unconstrained space (the autoguide ``guide.globals``) and, for a continuous local, free
    parameters per training datum, :math:`q(z_n) = \mathcal N(m_n, \mathrm{diag}\, s_n^2)`
    (non-amortized mean-field VI). Enumerated locals stay in the model.

    **Needs** global latents, or a continuous local site of rows whose family reads the rows'
    numbers (``Batch.index``). **Offers**, with such a local, a proposal for the training rows
    only, so it scores no held-out data as it is (no held-out loss in training): before other
    rows are scored, a :math:`q(z_n)` of their own is fitted for ``guide.held_out_steps`` ELBO
    steps with the globals fixed. Any proposal keeps the importance estimate of
    :math:`p(x_n \mid \theta)` unbiased; the steps only lower its variance.
    """

    names = ("meanfield",)
    Config = MeanFieldConfig

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
        return GuideTraits(
            proposal=local,
            per_datum=local,
            point_estimate=self.config.globals == "AutoDelta",
            held_out_steps=self.config.held_out_steps if local else 0,
        )

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        c = self.config
        init = start(model, x, generator)
        if not continuous_locals(model):
            return build_autoguide(AUTOGUIDES[c.globals].pyro_class, model, init, c.init_scale, c.globals_options)
        globals_ = globals_guide(model, c.globals, init, c.init_scale, c.globals_options)
        return MeanFieldLocal(model, num_data or len(x), globals_, init_scale=c.init_scale)

    def proposal(self, guide: torch.nn.Module, model: Any, x: Any, params: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The trained q(z_n) for training rows (``x`` carries their ``Batch.index``); for any other
        rows, a q(z_n) of their own fitted at ``params`` (see the module docstring)."""
        if not isinstance(guide, MeanFieldLocal) or (isinstance(x, Batch) and x.index is not None):
            return guide, x
        c = self.config
        rows = indexed(x)
        return guide.fitted_to(rows, params, steps=c.held_out_steps, lr=c.held_out_lr), rows

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide if isinstance(guide, MeanFieldLocal) else guide
