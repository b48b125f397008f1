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
    r"""Trace_ELBO: the Monte-Carlo ELBO, any model with a guide for its sampled latents.

    **Estimator.** With K = ``num_particles`` draws :math:`(\theta, z)^{(k)} \sim q(\theta, z \mid x)`,

    .. math::

        \mathrm{ELBO}(x) = \mathbb E_q\big[\log p(x, z, \theta) - \log q(\theta, z \mid x)\big]
        \approx \frac1K \sum_k \big[\log p(x, z^{(k)}, \theta^{(k)}) - \log q(z^{(k)}, \theta^{(k)} \mid x)\big],

    differentiated pathwise through reparameterised sites and by the score function
    (REINFORCE) through the others (Pyro's ``Trace_ELBO``).

    **Needs** a model with a density and a guide drawing all its latents; no enumerated locals
    (``enum`` sums those out). **Serves** VAEs, PPCA/FA, flows (the empty guide: the loss is
    :math:`-\log p(x)`), diffusion (the forward chain traced), your models with continuous locals.
    """

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
    r"""TraceMeanField_ELBO (analytic KL terms; ``free_bits``: a floor on the local KL per dimension).

    **Estimator.** The ELBO as :math:`\mathbb E_q \log p(x \mid z, \theta) - \mathrm{KL}(q \,\|\, p)`,
    each site's KL in closed form where Pyro has it (Monte Carlo otherwise): lower variance than
    ``elbo``. With ``free_bits`` λ > 0, the KL of each local latent dimension j, averaged over the
    minibatch, is not penalised below λ nats (Kingma et al. 2016):
    :math:`\sum_n \sum_j \mathrm{KL}_{nj} \to B \sum_j \max(\lambda, \tfrac1B \sum_n \mathrm{KL}_{nj})`.

    **Needs** what ``elbo`` needs, and guide sites drawn independently of each other (no
    ``forward`` chain, no per-time-step encoder); ``free_bits`` needs a continuous local site.
    """

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
    r"""TraceEnum_ELBO (discrete latents summed out by enumeration).

    **Estimator.** The ELBO with every enumerated local summed out exactly (tensor variable
    elimination in log space, Pyro's ``TraceEnum_ELBO``): for a model whose only locals are
    discrete, with a guide of the globals,

    .. math::

        \mathrm{ELBO} = \mathbb E_{q(\theta)}\Big[\sum_n \log \sum_{z_n} p(x_n, z_n \mid \theta)
        + \log p(\theta) - \log q(\theta)\Big],

    so the data term is the exact marginal likelihood; continuous locals beside the discrete
    ones are sampled from the guide. A family that sums its chain out inside the observed site
    (an HMM's forward algorithm) leaves nothing to enumerate and gets the same value.

    **Needs** a model whose local latents are enumerated (discrete, finite; continuous ones beside
    them drawn by the guide), or that has none. **Serves** mixtures, HMMs, graph and Pyro models
    with discrete locals (the semi-supervised VAE's missing labels).
    """

    names = ("enum",)
    enumerates = True

    def elbo(self, model: Any) -> ELBO:
        # latents collapsed into a distribution (or none at all) leave no site to enumerate
        strict = model.enumerated and not model.collapsed
        return TraceEnum_ELBO(strict_enumeration_warning=strict, **self.particles(model))
