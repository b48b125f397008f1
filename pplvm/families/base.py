"""The contract every pplvm family implements.

A family is a Pyro model ``p(x, z, θ) = p(θ) Π_n p(z_n | θ) p(x_n | z_n, θ)`` written as a
:class:`~pyro.nn.PyroModule` whose ``forward(x, num_data)`` *is* the model. Global latents
θ (``global_sites``) are fitted by a guide; per-datum latents z (``local_sites``) are either
summed out exactly by enumeration (``enumerated = True``) or inferred by an amortized guide.

Shapes: ``x`` is ``(N, D)`` for a batch of N data; ``params`` maps each global site to a
value of its site shape, optionally with leading batch dims (posterior draws) ``(*S, ...)``.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, ClassVar, Literal

import pyro
import torch
from pydantic import Field
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, infer_discrete
from pyro.nn import PyroModule
from pyro.nn.module import _PyroModuleMeta

from ..data.base import Batch, values
from ..distributions import CollapsedLatents
from ..errors import CardError
from ..schema import Section

LikelihoodKind = Literal["exact", "estimate", "bound", "none"]
#: importance samples per datum of an ``"estimate"`` log-likelihood when the caller (a run:
#: ``evaluation.samples``) gives none; an evaluation setting, not part of the fitted model
LIKELIHOOD_SAMPLES = 100


class FamilyConfig(Section):
    """Hyperparameters every family accepts; a family's ``Config`` adds its own."""

    family: str
    dim: int | None = Field(None, ge=1, description="data dimension; checked against the data if set")

    def for_restarts(self, restarts: int) -> "FamilyConfig":
        """This section with what it leaves to ``training.restarts`` decided (a start the
        restarts' seeds move further, :mod:`._starts`); itself by default. Built models take it."""
        return self


class _AbstractPyroModuleMeta(_PyroModuleMeta, abc.ABCMeta):
    pass


class LatentVariableModel(PyroModule, metaclass=_AbstractPyroModuleMeta):
    """Base of every family. Subclasses implement the abstract methods and nothing else."""

    Config: ClassVar[type[FamilyConfig]]
    #: names of per-datum latent sites
    local_sites: ClassVar[tuple[str, ...]]
    #: True when the local latents are discrete and summed out by TraceEnum_ELBO
    enumerated: ClassVar[bool]
    #: True when those discrete latents are summed out inside the observed site's distribution
    #: (a :class:`~pplvm.distributions.CollapsedLatents`, e.g. an HMM's parallel forward
    #: algorithm) rather than by enumerating sample sites; that distribution then answers
    #: :meth:`local_marginals` and :meth:`map_locals`.
    collapsed: ClassVar[bool] = False
    #: what :meth:`log_likelihood` returns: ``"exact"`` (the marginal itself), ``"estimate"``
    #: (importance sampling with the guide as proposal, see :class:`ContinuousLatentModel`),
    #: ``"bound"`` (a lower bound, e.g. an ELBO) or ``"none"`` (an implicit density: refused)
    likelihood: ClassVar[LikelihoodKind]
    #: further log-likelihoods :meth:`log_likelihood` computes on request (``kind=<name>``), each
    #: name -> what it is, e.g. a diffusion family's ``"ode"`` (the probability-flow ODE);
    #: ``pplvm evaluate`` shows them beside the main one when asked (they may be expensive)
    extra_likelihoods: ClassVar[dict[str, str]] = {}
    #: what :meth:`local_marginals` and :meth:`map_locals` give: ``"exact"`` (closed form), or
    #: ``"estimate"``: importance sampling, each site's probabilities with their standard errors
    #: (``"<site>_stderr"``); both then take the keywords ``proposal`` (the run's guide),
    #: ``num_samples`` and ``seed`` as an estimated :meth:`log_likelihood` does
    marginals: ClassVar[Literal["exact", "estimate"]] = "exact"
    #: True when the model takes labels as input (``Batch.y``, e.g. a conditional VAE): a run
    #: hands it each split as ``Batch(x, y=labels)`` built from the data source's labels
    uses_labels: ClassVar[bool] = False
    #: True when the family takes the data source's labels where it gives them (``Batch.y``),
    #: and does without them otherwise (a model of your own with an argument ``y``)
    takes_labels: ClassVar[bool] = False
    #: True when a datum is a sequence (a Batch with ``lengths``, e.g. an HMM): a table of rows
    #: is refused as data (splitting it would cut its time steps apart and shuffle them)
    sequential: ClassVar[bool] = False
    vectorized_particles: ClassVar[bool] = True  #: False: ``forward`` takes no leading particle dim
    #: True when ``forward`` reads batches by ``values()``: they may carry rows (``Batch.index``)
    indexed_rows: ClassVar[bool] = False
    observed_site: ClassVar[str] = "obs"
    #: name and dim of the plate over data (a user's model names its own)
    plate_name: ClassVar[str] = "data"
    plate_dim: ClassVar[int] = -1
    max_plate_nesting: ClassVar[int] = 1
    #: arviz dimension names of global sites (unnamed dims get arviz's defaults)
    site_dims: ClassVar[dict[str, list[str]]] = {}
    #: ``(H, W)`` when the data are images (sample grids); set by a family that knows it
    image_shape: tuple[int, int] | None = None

    def __init__(self, config: FamilyConfig, dim: int):
        super().__init__()
        self.config = config
        self.dim = int(dim)
        # follows .to(device); constants the model creates (priors, plate indices) go there
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @property
    def discrete_sites(self) -> tuple[str, ...]:
        """The local sites summed out by enumeration (all of them in an enumerated family; a
        model of your own may have continuous ones beside them)."""
        return tuple(self.local_sites) if self.enumerated else ()

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters and of the constants it creates."""
        return self._device_anchor.device

    def scalar(self, value: float) -> torch.Tensor:
        """``value`` as a 0-dim tensor on the model's device (a prior's constant)."""
        return torch.tensor(value, dtype=self._device_anchor.dtype, device=self.device)

    @classmethod
    def needs_labels(cls, config: FamilyConfig) -> str | None:
        """What in a card's ``[model]`` section makes its model take labels (:attr:`uses_labels`),
        named in the error where the data source gives none; None when it takes none. A family
        whose card decides it (a graph with a ``side`` node) says so here."""
        return f"model.family = {config.family!r}" if cls.uses_labels else None

    @classmethod
    def from_config(
        cls, config: FamilyConfig, dim: int, model: Any = None, guide: Any = None, example: Any = None
    ) -> "LatentVariableModel":
        """The family for a card's ``[model]`` section and data of ``dim`` columns. ``model`` /
        ``guide``: a user's model and guide objects passed from Python, for a family built
        around them (:mod:`pplvm.families.pyro_model`); every other family refuses them.
        ``example``: the training data (or rows of it), for a family that reads its structure
        off a model traced on them."""
        if model is not None or guide is not None:
            raise CardError(
                f"model.family = {config.family!r} takes no model= or guide= object; "
                "a model of your own is model.family = 'pyro'"
            )
        return cls(config, dim)

    # ----------------------------------------------------------------- the contract
    @property
    @abc.abstractmethod
    def global_sites(self) -> tuple[str, ...]:
        """Names of the global latent sites θ, in the order the guide sees them."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        """The Pyro model. ``x``: ``(B, D)`` batch or None (generate ``num_data`` rows);
        ``num_data``: size of the full data set, so minibatch log-probs are scaled by N / B."""

    @abc.abstractmethod
    def log_likelihood(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log p(x_n | θ)`` with local latents marginalised: shape ``(*S, N)``."""

    @abc.abstractmethod
    def init_values(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Data-driven starting values for the global sites (may be empty). A family with
        maximum-likelihood parameters of its own may also set those in place here (it is
        called once with the training data, before the optimiser is built)."""

    @abc.abstractmethod
    def prepare(self, data: Any, name: str = "data") -> "torch.Tensor | Batch":
        """Convert user data to what ``forward`` takes (a ``(N, D)`` tensor or a
        :class:`~pplvm.data.Batch`), checking it: raise DataError naming ``name`` otherwise."""

    @abc.abstractmethod
    def check_data(self, x: "torch.Tensor | Batch") -> None:
        """Training-only checks (e.g. at least K rows for K components); raise DataError."""

    @abc.abstractmethod
    def plots(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Family diagnostic figures, ``name -> matplotlib Figure``."""

    def graph_prototype(self) -> torch.nn.Module:
        """The model whose trace ``model.png`` draws: itself (the default), or a stand-in with the
        same structure that is cheaper to trace (a diffusion: a short chain)."""
        return self

    def restart_refusal(self) -> str | None:
        """Why ``training.restarts`` > 1 would repeat one fit (every start the same point, e.g. a
        deterministic data-driven start), in words that name the card's setting; None (the
        default) where each ``training.seed`` starts elsewhere."""
        return None

    def evaluation_cost(self, x: "torch.Tensor | Batch") -> int:
        """Float elements the largest intermediate tensor of :meth:`log_likelihood`,
        :meth:`replicate` or :meth:`local_marginals` holds per (parameter draw, datum) of
        ``x``; memory-bounded evaluation (:mod:`pplvm.evaluation.memory`) divides its budget
        by it. Default: four times a datum's elements; families with latent states override it."""
        return 4 * int(values(x)[0].numel())

    # ------------------------------------------------------------ shared machinery
    def validate(self, data: Any, name: str = "data") -> "torch.Tensor | Batch":
        """Return ``data`` prepared and checked for training, or raise a clear DataError."""
        data = self.prepare(data, name)
        self.check_data(data)
        return data

    def data_plate(self, x: torch.Tensor | None, num_data: int | None) -> pyro.plate:
        """The plate over data. With a minibatch ``x`` of B rows out of ``num_data``, the
        plate's subsample scales every log-prob inside it by ``num_data / B``."""
        if x is None:
            if num_data is None:
                raise ValueError("give x, or num_data rows to generate")
            return pyro.plate(self.plate_name, num_data, dim=self.plate_dim, device=self.device)
        size = len(x) if num_data is None else num_data
        rows = (
            x.index
            if isinstance(x, Batch) and x.index is not None
            else torch.arange(len(x), device=(x.x if isinstance(x, Batch) else x).device)
        )
        return pyro.plate(self.plate_name, size, subsample=rows, dim=self.plate_dim)

    def conditioned(self, params: dict[str, torch.Tensor]):
        """The model with its global sites fixed to ``params``."""
        return poutine.condition(self, data=params)

    def likelihood_terms(
        self, x: "torch.Tensor | Batch", params: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """An additive decomposition of ``-log_likelihood(x, params)`` into named per-datum terms
        in nats, each ``(N,)`` (e.g. a diffusion bound's L_0 .. L_T), which ``pplvm evaluate``
        tabulates and plots; None (the default) where a family has no such decomposition."""
        return None

    @torch.no_grad()
    def sample(self, n: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Draw ``n`` new data ``(n, D)`` from ``p(x | θ = params)``."""
        trace = poutine.trace(self.conditioned(params)).get_trace(None, num_data=n)
        return trace.nodes[self.observed_site]["value"]

    @torch.no_grad()
    def replicate(self, x: "torch.Tensor | Batch", params: dict[str, torch.Tensor]) -> torch.Tensor:
        """A posterior-predictive replicate of ``x``: one new datum per datum of ``x`` from
        ``p(x | θ = params)``, with the same design (sequence lengths, covariates), shaped like
        ``values(x)``. The model runs on ``x`` with its observed site sampled instead."""
        # uncondition inside, condition outside: the observation is redrawn, θ stays fixed
        trace = poutine.trace(poutine.condition(poutine.uncondition(self), data=params)).get_trace(x)
        return trace.nodes[self.observed_site]["value"]

    @torch.no_grad()
    def local_marginals(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Exact posterior marginals ``p(z_n = k | x, θ)`` of enumerated local sites, each
        ``(N, K)`` (``(N, T, K)`` for chains): by ``TraceEnum_ELBO.compute_marginals``, or,
        for ``collapsed`` families, by the observed site's distribution."""
        if not self.enumerated:
            raise TypeError(f"{type(self).__name__} has no enumerated local latents")
        if self.collapsed:
            fn, value = self._collapsed_site(x, params)
            return fn.latent_marginals(value)
        elbo = TraceEnum_ELBO(max_plate_nesting=self.max_plate_nesting)
        marginals = elbo.compute_marginals(self.conditioned(params), _empty_guide, x)
        return {name: marginals[name].probs for name in self.local_sites}

    @torch.no_grad()
    def map_locals(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Jointly most probable local states given ``x`` and ``θ``: ``infer_discrete`` at
        temperature 0, or, for ``collapsed`` families, the observed site's distribution."""
        if not self.enumerated:
            raise TypeError(f"{type(self).__name__} has no enumerated local latents")
        if self.collapsed:
            fn, value = self._collapsed_site(x, params)
            return fn.latent_map(value)
        decoder = infer_discrete(
            self.conditioned(params), first_available_dim=-1 - self.max_plate_nesting, temperature=0
        )
        trace = poutine.trace(decoder).get_trace(x)
        return {name: trace.nodes[name]["value"] for name in self.local_sites}

    def _collapsed_site(self, x, params) -> tuple[CollapsedLatents, torch.Tensor]:
        """The observed site's distribution and value, for families with ``collapsed`` latents."""
        site = poutine.trace(self.conditioned(params)).get_trace(x).nodes[self.observed_site]
        if not isinstance(site["fn"], CollapsedLatents):
            raise TypeError(
                f"{type(self).__name__}.collapsed is set but its {self.observed_site!r} site's "
                f"distribution {type(site['fn']).__name__} is not a CollapsedLatents"
            )
        return site["fn"], site["value"]


def over_draws(
    params: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """``fn(θ)`` ``(N,)`` for each draw of ``params`` (site -> ``(*S, *shapes[site])``), one draw
    at a time, stacked to ``(*S, N)``; without global sites ``fn({})`` itself."""
    params = {k: v for k, v in params.items() if k in shapes}
    if not params:
        return fn({})
    name = next(iter(params))
    batch = tuple(params[name].shape[: params[name].dim() - len(shapes[name])])
    flat = {k: v.reshape(-1, *shapes[k]) for k, v in params.items()}
    rows = [fn({k: v[i] for k, v in flat.items()}) for i in range(math.prod(batch))]
    return torch.stack(rows).reshape(*batch, -1)


def _empty_guide(*args, **kwargs) -> None:
    """A guide with no sites: every latent is conditioned or enumerated in the model."""


class ContinuousLatentModel(LatentVariableModel):
    """Families whose per-datum latent ``z_n`` (one local site, ``(N, L)``) is continuous:
    PPCA, factor analysis, VAEs. Their ``amortized`` guide is
    :class:`pplvm.guides.amortized.AmortizedNormal` around :meth:`make_encoder`.

    With the ``meanfield`` guide (free ``q(z_n)`` per training datum) the trainer feeds
    ``forward`` a :class:`~pplvm.data.Batch` carrying ``index``: a family admitting that guide
    reads its observations with :func:`~pplvm.data.values`.

    A family with ``likelihood = "estimate"`` estimates its marginal by
    importance sampling (:func:`pplvm.inference.importance.importance_log_likelihood`), and
    its :meth:`log_likelihood` accepts a keyword ``proposal``: a guide called as ``proposal(x)``
    that samples the local latent inside the data plate, which a run fills with its guide.
    Every ``"estimate"`` family's :meth:`log_likelihood` also takes ``num_samples``, the draws
    per datum (a run passes ``evaluation.samples``; default :data:`LIKELIHOOD_SAMPLES`)."""

    enumerated = False

    @property
    @abc.abstractmethod
    def latent_dim(self) -> int:
        """Dimension L of the local latent."""

    @property
    def latent_site(self) -> str:
        """Name of the continuous local site ``z_n`` that the local guides serve."""
        return self.local_sites[0]

    @abc.abstractmethod
    def make_encoder(self) -> torch.nn.Module:
        """A module mapping a batch to ``(loc, scale)`` of ``q(z_n | x_n)``, each ``(B, L)``."""

    def amortization(self) -> str:
        """Why a guide with an encoder cannot serve the local latent ('' when it can)."""
        return ""


# the capabilities a family declares by subclassing (what guides and objectives ask for)
from .capabilities import (  # noqa: E402,F401
    ClosedFormEM,
    ContinuousTimeLoss,
    EMEstimate,
    ExactLocalPosterior,
    FixedGuide,
    IdentifiedSummaries,
    LatentDecoder,
    LocalLayout,
    LocalSites,
    StepSites,
    UserGuide,
)
