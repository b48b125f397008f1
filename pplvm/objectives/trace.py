"""The ELBO by its short names: ``elbo`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO, analytic
KL terms; with ``free_bits``, :class:`~.free_bits.FreeBitsELBO`) and ``enum`` (TraceEnum_ELBO,
discrete latents summed out by enumeration)."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .free_bits import FreeBitsELBO
from .svi import SVIConfig, SVIObjective


class Elbo(SVIObjective):
    """Trace_ELBO."""

    names = ("elbo",)

    def elbo(self, model: Any) -> ELBO:
        return Trace_ELBO(**self.particles(model))


class MeanFieldConfig(SVIConfig):
    free_bits: float = Field(
        0.0,
        ge=0,
        description="free bits: nats per latent dimension (minibatch mean) below which the KL is not penalised",
    )


class MeanField(SVIObjective):
    """TraceMeanField_ELBO (analytic KL terms; ``free_bits``: a floor on the local KL per dimension)."""

    names = ("meanfield",)
    Config = MeanFieldConfig
    mean_field = True

    def elbo(self, model: Any) -> ELBO:
        if self.config.free_bits > 0:
            return FreeBitsELBO(self.config.free_bits, model.local_sites, **self.particles(model))
        return TraceMeanField_ELBO(**self.particles(model))

    def refusal(self, model: Any, guide: Any) -> str | None:
        why = super().refusal(model, guide)
        if why is None and self.config.free_bits > 0 and model.enumerated:
            return (
                f"objective.free_bits weights the KL of continuous local latents; family {model.config.family!r} "
                f"sums its latent(s) {', '.join(model.local_sites)} out by enumeration"
            )
        return why


class Enum(SVIObjective):
    """TraceEnum_ELBO (discrete latents summed out by enumeration)."""

    names = ("enum",)
    enumerates = True

    def elbo(self, model: Any) -> ELBO:
        # latents collapsed into a distribution (or none at all) leave no site to enumerate
        strict = model.enumerated and not model.collapsed
        return TraceEnum_ELBO(strict_enumeration_warning=strict, **self.particles(model))
