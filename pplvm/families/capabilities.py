"""The capabilities a family declares by subclassing, beside the contract
(:class:`~pplvm.families.base.LatentVariableModel`): a closed-form local posterior, a guide of
its own or a fixed one, exact EM, identified summaries, a latent decoder, several local sites
an encoder may serve. Guides and objectives
state what they need against these (:mod:`pplvm.guides`, :mod:`pplvm.objectives`)."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Literal

import torch


class ExactLocalPosterior(abc.ABC):
    """Capability of a family whose local posterior ``p(z_n | x_n, θ)`` has a closed form
    (linear-Gaussian models). It enables the ``exact`` guide (:mod:`pplvm.guides.exact`)."""

    @abc.abstractmethod
    def local_posterior(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> "torch.distributions.Distribution":
        """``p(z_n | x_n, θ)`` for ``x`` ``(N, D)``: batch shape ``(*S, N)``, event shape ``(L,)``.
        Batch dims of ``params`` broadcast against the data dim from the right, as inside
        Pyro's data plate (a site of shape ``(*S, 1, ...)``)."""


class UserGuide(abc.ABC):
    """Capability of a family that brings its own guide (``guide.kind = "custom"``), e.g. a
    user's Pyro model with the user's guide."""

    #: whether a guide was given (``model.guide_target``, or ``guide=`` from Python)
    brings_guide: bool = False
    #: whether that guide draws every local latent the model does not enumerate, given x: an
    #: importance-sampling proposal (it forms no q(z_n | x_n) to query)
    guide_draws_locals: bool = False

    @abc.abstractmethod
    def user_guide(self) -> torch.nn.Module:
        """The guide, called as ``guide(x, num_data)``; it has ``median()``: a point estimate of
        the global latents."""


class FixedGuide(abc.ABC):
    """Capability of a family whose guide is part of the model's definition and has no
    parameters (diffusion's forward noising process q(z_1..z_T | x)): it enables the guide
    kind ``forward``. Such a family has no encoder to train and, here, no global latents."""

    @abc.abstractmethod
    def make_fixed_guide(self) -> torch.nn.Module:
        """The guide, a Pyro program ``guide(x, num_data)`` over the family's local sites."""


EMEstimate = Literal["map", "ml"]


class ClosedFormEM(abc.ABC):
    """Capability of a family fitted by exact expectation–maximisation (objective ``em``,
    :mod:`pplvm.objectives.em`): the E-step takes expectations under the exact local posterior
    ``p(z_n | x_n, θ)``, the M-step maximises in closed form. The point estimate of the global
    sites lives in a ``map`` guide; the family's own maximum-likelihood parameters (if any) are
    set in place by :meth:`maximize`.

    Statistics are sums over data, so minibatch statistics scaled by N / B estimate the full
    data's, running averages of them give stepwise EM, and data-parallel workers add theirs."""

    #: True when :meth:`expected_statistics` and :meth:`maximize` also take globals with one
    #: leading restart dim ``R`` (every site ``(R, ...)``; the statistics and the log-likelihood
    #: then lead with ``R`` too, each restart's its own): ``training.restarts`` run in one pass
    batched_restarts: bool = False

    @abc.abstractmethod
    def em_estimates(self) -> tuple[EMEstimate, ...]:
        """Which M-steps this configuration has in closed form: ``"map"`` (the posterior mode
        under the family's priors) and/or ``"ml"`` (maximum likelihood)."""

    @abc.abstractmethod
    def expected_statistics(self, x: Any, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """E-step on a batch ``x`` at the globals ``params`` (point values, no sample dims):
        sums over the batch of the expected complete-data sufficient statistics, plus
        ``"log_likelihood"``, ``Σ_n log p(x_n | θ)`` (0-dim)."""

    @abc.abstractmethod
    def maximize(
        self, stats: dict[str, torch.Tensor], params: dict[str, torch.Tensor], estimate: EMEstimate
    ) -> dict[str, torch.Tensor]:
        """M-step from statistics of the whole data set (what :meth:`expected_statistics`
        returns, summed over all N data) and the current globals ``params``: the new values of
        the global sites (the family's own parameters are updated in place). Each update
        is the exact (conditional) maximiser, so the log posterior (``"map"``) or
        log-likelihood (``"ml"``) never decreases."""


class IdentifiedSummaries(abc.ABC):
    """Capability of a family whose globals are identified only up to a symmetry (label
    switching, rotations): functions of θ that are invariant to it, for calibration checks
    (:mod:`pplvm.workflows.sbc`) and summaries. Families without it are checked on θ itself."""

    @abc.abstractmethod
    def identified(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Invariant functions of the globals, each ``(*S, m)`` for ``params`` ``(*S, ...)``."""


class LatentDecoder(abc.ABC):
    """Capability of a family that maps a continuous latent ``z`` ``(*S, B, L)`` to data through
    a decoder (VAEs, GANs): latent interpolation and traversal
    (:mod:`pplvm.workflows.latent`) need only this."""

    #: how side information ``y`` enters the decoder (:class:`pplvm.decoders.side.SideInformation`)
    side: Any

    @property
    @abc.abstractmethod
    def latent_dim(self) -> int:
        """Dimension L of the latent."""

    @abc.abstractmethod
    def decode(
        self, z: torch.Tensor, side: torch.Tensor | None = None, params: dict[str, torch.Tensor] | None = None
    ) -> "torch.distributions.Distribution":
        """``p(x | z, side)`` with batch ``(*S, B)`` and event ``(D,)``; its ``.mean`` is the decoded
        datum. ``params``: the global latents the decoder depends on (a Bayesian decoder's
        weights, e.g. ``run.params()``), ignored by a decoder without any."""


@dataclasses.dataclass(frozen=True)
class StepSites:
    """A continuous local site repeated per time step of a sequence, as a ``pyro.markov`` loop
    names it: step ``t = 0, 1, ..`` is the site ``f"{stem}{t + offset}"``, each ``(B, dim)``."""

    stem: str
    offset: int
    dim: int
    #: how many steps a batch has: ``"padded"`` (its padded length, ``x.shape[1]``, as Pyro's
    #: DMM loops) or ``"longest"`` (its longest sequence, ``lengths.max()``)
    follows: Literal["padded", "longest"] = "padded"
    #: the model masks the step beyond each sequence's length (``.mask(mask[:, t])``), so its
    #: guide must too: a padded step then adds nothing to the ELBO or the likelihood
    masked: bool = True

    def name(self, t: int) -> str:
        """The site of step ``t`` (0-based): the stem and ``t + offset`` (``z_1`` for ``t = 0``)."""
        return f"{self.stem}{t + self.offset}"


@dataclasses.dataclass(frozen=True)
class LocalLayout:
    """The continuous local latents of a model, site by site: ``rows`` (name, L) of sites
    ``(B, L)`` per datum, ``steps`` of sites per time step; ``sequences``: its data are padded
    sequences; ``refusal``: why an encoder cannot serve them ('' when it can)."""

    rows: tuple[tuple[str, int], ...] = ()
    steps: tuple[StepSites, ...] = ()
    sequences: bool = False
    refusal: str = ""

    @property
    def single(self) -> bool:
        """One site per datum of rows: what the one-site encoder guide serves."""
        return len(self.rows) == 1 and not self.steps and not self.sequences


class LocalSites(abc.ABC):
    """Capability of a family whose continuous local latents (in its data plate, at dim -1)
    an amortized guide may serve site by site: several per datum, one per time step of a
    sequence, or both (:mod:`pplvm.guides.sites`). The guide samples them inside
    :meth:`~pplvm.families.base.LatentVariableModel.data_plate` on what the model is called
    with (``model_input``)."""

    @abc.abstractmethod
    def local_layout(self) -> LocalLayout:
        """The model's continuous local sites (see :class:`LocalLayout`)."""

    @abc.abstractmethod
    def make_local_encoder(self, layout: LocalLayout) -> torch.nn.Module:
        """The networks of ``q(z | x)`` for ``layout``: a :class:`~pplvm.decoders.sites.SiteEncoder`."""


class ContinuousTimeLoss(abc.ABC):
    """Capability of a diffusion family that computes its own continuous-time bound, with parts
    that only it knows how to train (VDM's learned noise schedule): the ``vdm`` objective calls
    it instead of interpolating a fixed schedule, and the discrete-time ``diffusion`` objective
    refuses it."""

    @abc.abstractmethod
    def continuous_time_loss(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        """The loss per datum ``(B,)`` of a batch ``x`` ``(B, D)``, ``num_particles`` times drawn
        per datum: a differentiable ``-ELBO`` estimate (whose gradient may be shaped, e.g. VDM's
        variance-minimising gradient for its schedule)."""
