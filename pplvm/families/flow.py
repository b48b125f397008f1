"""Normalizing flows: an exact marginal by the change of variables (:class:`NormalizingFlow`; its
transforms and the dequantisation bound in full: the documentation page ``families/flow``)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pydantic import Field, model_validator
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn

from ..data.base import Batch, as_matrix, values
from ..errors import CardError, DataError
from .base import FamilyConfig, LatentVariableModel

TransformName = Literal["affine_coupling", "spline_coupling", "maf", "iaf", "permute", "batchnorm", "actnorm"]
#: transforms that mix dimensions through a coupling (need D >= 2)
COUPLINGS = ("affine_coupling", "spline_coupling")
#: data whose every column takes at most this many values, each seen ~10+ times, look discrete
MAX_LEVELS = 256
#: draws of u per datum of a dequantised flow's log-likelihood when the run's
#: ``evaluation.samples`` is unset
DEQUANTIZED_SAMPLES = 64


class FlowConfig(FamilyConfig):
    family: Literal["flow"] = "flow"
    transforms: list[TransformName] = Field(
        ["affine_coupling", "permute"], description="one block of transforms, in generative order z -> x"
    )
    repeat: int = Field(4, ge=1, description="the block is repeated this many times")
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 64],
        min_length=1,
        description="hidden widths of each transform's network (autoregressive ones: at least the data dimension)",
    )
    count_bins: int = Field(8, ge=2, description="spline_coupling: bins of each spline")
    bound: float = Field(5.0, gt=0, description="spline_coupling: splines act on [-bound, bound]")
    dequantize: Literal["none", "uniform", "variational"] = Field(
        "none", description="discrete data: none (refused) | uniform | variational (a conditional flow)"
    )
    levels: int | None = Field(None, ge=2, description="discrete values per dimension, x = j / (levels - 1)")
    dequantizer_transforms: int = Field(2, ge=1, description="variational: conditional IAF layers of q(u | x)")
    image_shape: list[int] | None = Field(None, description="[H, W] to show samples as images")

    @model_validator(mode="after")
    def _levels_with_dequantize(self):
        if (self.dequantize == "none") != (self.levels is None):
            raise ValueError(
                "model.levels (discrete values per dimension) is set exactly when "
                "model.dequantize is 'uniform' or 'variational'"
            )
        if not self.transforms:
            raise ValueError("model.transforms: expected at least one transform")
        return self


class ActNorm(TransformModule):
    """``y = loc + exp(log_scale) ⊙ x`` per dimension (Kingma & Dhariwal 2018), event dim 1.
    ``log |det ∂y/∂x| = Σ log_scale``; :meth:`initialize` sets it so data arriving at its
    output are standardised by its inverse."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, dim: int):
        super().__init__(cache_size=1)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def _call(self, x):
        return self.loc + self.log_scale.exp() * x

    def _inverse(self, y):
        return (y - self.loc) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x, y):
        return self.log_scale.sum().expand(x.shape[:-1])

    @torch.no_grad()
    def initialize(self, y: torch.Tensor) -> None:
        """Data-dependent initialisation from outputs ``y`` ``(N, D)``."""
        self.loc.copy_(y.mean(0))
        self.log_scale.copy_(y.std(0).clamp_min(1e-3).log() if len(y) > 1 else torch.zeros_like(self.loc))


class _Permutation(nn.Module):
    """Holds a fixed permutation as a buffer (it follows the module's device and checkpoints)."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        self.register_buffer("permutation", torch.randperm(dim, generator=torch.Generator().manual_seed(seed)))

    def transform(self) -> T.Permute:
        return T.Permute(self.permutation)


def _forget(layer: nn.Module) -> None:
    """Empty a transform's one-entry cache, kept on the module between calls: a chain built anew
    must not hand back an output computed earlier from the same input object (a batch seen
    again) with earlier parameters, gradients cut (or by a traced step, outside its graph)."""
    if getattr(layer, "_cache_size", 0):
        layer._cached_x_y = None, None
    if getattr(layer, "_cached_log_scale", None) is not None:
        layer._cached_log_scale = None


def build_transform(name: str, dim: int, cfg: FlowConfig, position: int) -> nn.Module:
    """One of Pyro's transforms (a module; see the documentation page ``families/flow``) for ``dim`` dims."""
    hidden = list(cfg.hidden)
    if name in COUPLINGS and dim < 2:
        raise CardError(
            f"model.transforms: {name!r} splits the dimensions in two and needs data with at "
            f"least 2 columns (got {dim}); use 'maf' or 'iaf'"
        )
    if name == "affine_coupling":
        return T.affine_coupling(dim, hidden_dims=hidden)
    if name == "spline_coupling":
        return T.spline_coupling(dim, hidden_dims=hidden, count_bins=cfg.count_bins, bound=cfg.bound)
    if name in ("maf", "iaf"):
        return T.affine_autoregressive(dim, hidden_dims=autoregressive_widths(hidden, dim))
    if name == "permute":
        return _Permutation(dim, seed=position)
    if name == "batchnorm":
        return T.BatchNorm(dim)
    return ActNorm(dim)


def autoregressive_widths(hidden: list[int], dim: int) -> list[int]:
    """Hidden widths for an ``AutoRegressiveNN`` over ``dim`` inputs: its masks need at least
    ``dim`` units per layer, so narrower layers are widened to ``dim``."""
    return [max(h, dim) for h in hidden] or [dim]


class Dequantized(dist.TorchDistribution):
    """``P(x)`` of grid data ``x = j / (K - 1)`` under a flow density on ``(0, 1)^D``: batch
    ``(N,)``, event ``(D,)``. :meth:`log_prob` is one draw of the dequantisation bound (see the
    class :class:`NormalizingFlow`), differentiable in the flow and in ``q(u | x)``; :meth:`sample` draws
    ``y`` from the flow and returns its cell ``floor(K y) / (K - 1)``."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, flow: dist.Distribution, levels: int, dequantizer=None, validate_args=None):
        self.flow, self.levels, self.dequantizer = flow, int(levels), dequantizer
        super().__init__(flow.batch_shape, flow.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return Dequantized(self.flow.expand(batch_shape), self.levels, self.dequantizer)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()):
        k = self.levels
        return (self.flow.sample(sample_shape) * k).floor().clamp(0, k - 1) / (k - 1)

    def log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, defensive: bool = False
    ) -> torch.Tensor:
        """One draw of the bound per datum, ``(N,)``. ``defensive``: draw u from
        ``½ q(u | x) + ½ U(0, 1)^D`` instead of ``q`` (for importance-sampled estimates: a
        sigmoid-of-normal q vanishes at the cell's edges faster than p, so its weights have
        unbounded variance; the uniform half bounds them by 2)."""
        k, d = self.levels, x.shape[-1]
        j = (x * (k - 1)).round()
        uniform = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.dequantizer is None:
            u, log_q = uniform, 0.0
        elif not defensive:
            q = self.dequantizer.condition(2 * x - 1)
            u = q.rsample()
            log_q = q.log_prob(u)
        else:
            context = 2 * x - 1
            q = self.dequantizer.condition(context)
            pick = torch.rand(x.shape[:-1], generator=generator, device=x.device) < 0.5
            drawn = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            for t in q.transforms:  # q's draws from the same generator
                drawn = t(drawn)
            uniform = uniform.clamp(1e-6, 1 - 1e-6)
            u = torch.where(pick[..., None], drawn, uniform)
            log_q, other = q.log_prob(drawn), ~pick  # q's own draws: cached; inverting its IAF only where uniform
            log_q[other] = self.dequantizer.condition(context[other]).log_prob(uniform[other])
            log_q = torch.logaddexp(log_q, torch.zeros(())) - math.log(2)
        eps = 1e-6  # keeps y strictly inside (0, 1), where the sigmoid's inverse is finite
        y = (j + u.clamp(eps, 1 - eps)) / k
        return self.flow.log_prob(y) - d * math.log(k) - log_q


class NormalizingFlow(LatentVariableModel):
    r"""Normalizing flow: ``x = f_θ(z)``, ``z ~ N(0, I)``, its likelihood exact by the change of variables.

    **Prior and likelihood.** :math:`z_n \sim \mathcal N(0, I_D)`,
    :math:`x_n = f_\theta(z_n) = T_K \circ \dots \circ T_1(z_n)`: Pyro's transforms named in
    ``model.transforms`` (z → x; ``affine_coupling``, ``spline_coupling``, ``maf``, ``iaf``,
    ``permute``, ``batchnorm``, :class:`ActNorm`), the block repeated ``model.repeat`` times.

    **Marginal: exact** (change of variables). ``log_likelihood`` returns :math:`\log p(x_n) =
    \log \mathcal N(f_\theta^{-1}(x_n); 0, I) + \log |\det \partial f_\theta^{-1}/\partial x\,(x_n)|`.
    Data on K levels :math:`x = j/(K-1)` are dequantised (``model.dequantize``): the flow models
    :math:`y = (j + u)/K \in (0, 1)^D` and is trained on the bound

    .. math::

        \log P(x) \ge \mathbb E_{q(u \mid x)}\big[\log p_\theta((j + u)/K) - D \log K - \log q(u \mid x)\big],

    ``q`` uniform or a conditional flow (``variational``); ``log_likelihood`` is then the
    importance-sampled estimate over ``evaluation.samples`` draws of u from
    :math:`\tfrac12 q + \tfrac12 U(0,1)^D` (``likelihood = "estimate"``, a stochastic lower bound).

    **Latent structure.** No latent site is sampled (no global latents, no local ones), so the
    only guide is ``none``, and with it Pyro's ``Trace_ELBO`` (``objective.name = "elbo"``) *is*
    :math:`-\log p(x)` (or minus the bound): SVI is maximum likelihood.

    **Card.** ``model.transforms``, ``repeat``, ``hidden``, ``dequantize`` and ``levels``. From
    ``models/flow_digits.toml``:

    .. code-block:: toml

        [model]
        family = "flow"
        transforms = ["actnorm", "affine_coupling", "permute"]   # generative order z -> x
        repeat = 6
        dequantize = "variational"   # or "uniform"; raw grey levels are refused
        levels = 17                  # values per pixel: j / 16, j = 0..16

        [guide]
        kind = "none"                # nothing to infer: log p(x) is exact
    """

    Config = FlowConfig
    local_sites = ()
    enumerated = False
    likelihood = "exact"  # "estimate" for an instance with dequantised discrete data (see __init__)

    def __init__(self, config: FlowConfig, dim: int):
        super().__init__(config, dim)
        names = list(config.transforms) * config.repeat
        self.names = names
        self.layers = nn.ModuleList([build_transform(n, dim, config, i) for i, n in enumerate(names)])
        # a plain reference to the same modules: read through it, the chain skips the PyroModule
        # attribute machinery (one param message per parameter per access)
        self._layers = (self.layers,)
        self.register_buffer("_origin", torch.zeros(dim))
        self.levels = config.levels
        if config.levels is not None:
            self.likelihood = "estimate"
        self.dequantizer = None
        if config.dequantize == "variational":
            self.dequantizer = _VariationalDequantizer(dim, config)
        self.image_shape = tuple(config.image_shape) if config.image_shape else None

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ()

    # ------------------------------------------------------------------ the model
    def transforms(self) -> list[T.Transform]:
        """The chain ``z -> x`` as Pyro transforms (ending in a sigmoid for dequantised data)."""
        out = []
        for name, layer in zip(self.names, self._layers[0]):
            _forget(layer)
            if name == "permute":
                out.append(layer.transform())
            elif name == "maf":
                out.append(layer.inv)
            else:
                if name == "batchnorm":  # batch statistics only while gradients flow (training)
                    layer.train(torch.is_grad_enabled())
                out.append(layer)
        if self.levels is not None:
            out.append(T.SigmoidTransform())
        return out

    def flow(self, n: int) -> dist.TransformedDistribution:
        """``p_θ(x)`` (dequantised: ``p_θ(y)``): batch ``(n,)``, event ``(D,)``."""
        base = dist.Normal(self._origin, torch.ones_like(self._origin)).to_event(1).expand([n])
        return dist.TransformedDistribution(base, self.transforms())

    def distribution(self, n: int) -> dist.Distribution:
        """The observed site's distribution: batch ``(n,)``, event ``(D,)``."""
        flow = self.flow(n)
        if self.levels is None:
            return flow
        return Dequantized(flow, self.levels, self.dequantizer)

    def forward(self, x=None, num_data=None):
        """``x``: ``(B, D)`` or None to generate ``num_data`` rows."""
        obs = values(x) if x is not None else None
        with self.data_plate(obs, num_data):
            return pyro.sample("obs", self.distribution(len(obs) if obs is not None else num_data), obs=obs)

    @torch.no_grad()
    def log_likelihood(
        self, x, params, *, num_samples: int | None = None, seed: int = 0, max_elements: int = 2**24
    ) -> torch.Tensor:
        """``log p(x_n)``, ``(N,)`` (no global latents: ``params`` is empty). Exact for
        continuous data; for dequantised data the importance-weighted bound
        ``log (1/S) Σ_s exp(bound_s)`` over S draws of u (``num_samples``, a run's
        ``evaluation.samples``; default :data:`DEQUANTIZED_SAMPLES`), in chunks of at most
        ``max_elements`` numbers."""
        x = values(x)
        if self.levels is None:
            return self.flow(len(x)).log_prob(x)
        s = num_samples or DEQUANTIZED_SAMPLES
        g = torch.Generator(device=x.device).manual_seed(seed)
        rows = max(1, max_elements // (s * self.dim))
        out = []
        for chunk in x.split(rows):
            rep = chunk.expand(s, *chunk.shape).reshape(-1, self.dim)
            with pyro.poutine.block():
                bounds = Dequantized(self.flow(len(rep)), self.levels, self.dequantizer).log_prob(
                    rep, generator=g, defensive=True
                )
            out.append(bounds.reshape(s, len(chunk)).logsumexp(0) - math.log(s))
        return torch.cat(out)

    # ------------------------------------------------------------- the contract
    def init_values(self, x, generator):
        """Initialise every :class:`ActNorm` from the training data pushed back through the
        chain (x -> z), so that each starts with standardised outputs. No global sites."""
        with torch.no_grad():
            y = values(x)
            if self.levels is not None:  # the cell centres, through the sigmoid's inverse
                y = T.SigmoidTransform().inv((((y * (self.levels - 1)).round() + 0.5) / self.levels))
            chain = self.transforms()[: len(self.layers)]
            for name, layer, t in reversed(list(zip(self.names, self.layers, chain))):
                if name == "actnorm":
                    layer.initialize(y)
                y = t.inv(y)
        return {}

    def prepare(self, data, name="data"):
        x = as_matrix(values(data) if isinstance(data, Batch) else data, name, dim=self.dim)
        if self.levels is not None:
            k = self.levels
            j = x * (k - 1)
            if x.min() < 0 or x.max() > 1 or not torch.allclose(j, j.round(), atol=1e-4):
                raise DataError(
                    f"{name}: model.dequantize = {self.config.dequantize!r} expects values on the grid "
                    f"j / {k - 1}, j = 0..{k - 1} in [0, 1] (model.levels = {k}); "
                    "check model.levels and set data.standardize = false"
                )
        return x

    def check_data(self, x):
        if self.levels is not None:
            return
        x = values(x)
        distinct = max(len(torch.unique(col)) for col in x.T)
        if distinct <= MAX_LEVELS and 10 * distinct <= len(x):
            raise DataError(
                f"data: every column takes at most {distinct} distinct values over {len(x)} rows: the data look "
                "discrete, and a flow's density on discrete values grows without bound; set model.dequantize = "
                "'uniform' or 'variational' with model.levels (values per dimension)"
            )

    def plots(self, x, params):
        from ..evaluation.plots import image_grid

        if self.image_shape is None:
            return {}
        with pyro.poutine.seed(rng_seed=0):
            return {"samples": image_grid(self.sample(64, {}), self.image_shape, title="flow samples")}


class _VariationalDequantizer(nn.Module):
    """``q(u | x)`` on ``(0, 1)^D``: a conditional IAF on ``x`` over ``N(0, I)``, then a sigmoid.
    ``condition(c)`` for context ``c`` ``(N, D)`` gives a distribution with batch ``(N,)``."""

    def __init__(self, dim: int, cfg: FlowConfig):
        super().__init__()
        hidden = autoregressive_widths(list(cfg.hidden), dim)
        self.layers = nn.ModuleList(
            [
                T.conditional_affine_autoregressive(dim, dim, hidden_dims=hidden)
                for _ in range(cfg.dequantizer_transforms)
            ]
        )
        self.register_buffer("_origin", torch.zeros(dim))

    def condition(self, context: torch.Tensor) -> dist.TransformedDistribution:
        base = dist.Normal(self._origin, torch.ones_like(self._origin)).to_event(1).expand(context.shape[:-1])
        transforms = [layer.condition(context) for layer in self.layers] + [T.SigmoidTransform(cache_size=1)]
        return dist.TransformedDistribution(base, transforms)
