"""Your own Pyro model as a family: ``model.family = "pyro"``, ``model.target = "pkg.module:name"``.

The target is a Pyro model written as a function ``model(x)`` or a ``PyroModule`` (an
instance, or a class built with ``model.options`` as keyword arguments), where ``x`` is a
``(B, D)`` batch of rows::

    def model(x):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))            # a global latent
        with pyro.plate("components", 3):
            mu = pyro.sample("mu", dist.Normal(0., 5.).expand([x.shape[1]]).to_event(1))
        with pyro.plate("data", len(x)):                              # the data plate
            z = pyro.sample("z", dist.Categorical(w))                 # a discrete local
            pyro.sample("obs", dist.Normal(mu[z], 1.).to_event(1), obs=x)

pplvm traces it once on placeholder batches of two sizes and reads off what the contract
needs (:class:`Structure`): the *data plate* (the plate around the observed site whose size
follows the batch), the one *observed site*, the *global* latents (outside the data plate:
guided by autoguides) and the *local* latents (inside it): discrete ones with a finite support
are summed out by enumeration, continuous ones with real support and shape ``(B, L)`` get an
amortized Gaussian encoder (or free per-datum normals). From that it declares the guides and
objectives that can work and whether ``log p(x_n | θ)`` is exact (every local enumerated, by
tensor contraction) or an importance-sampled estimate (continuous locals, the guide as
proposal). Minibatches scale every site in the data plate by ``N / B``.

Rules for the model: ``x`` enters only as the observation (pplvm generates new data by running
the model on a placeholder batch with its observed site sampled); parameters live in
``PyroModule``/``PyroParam`` attributes, never in ``pyro.param`` (pplvm keeps parameters in
modules); one observed site.

Train and eval mode: networks in the model and its guide (dropout, ``BatchNorm1d``, anything
reading ``Module.training``) run in ``.train()`` for training steps only, and in ``.eval()`` for
everything else — held-out evaluation during training, ``log_likelihood`` / ``evaluate``,
sampling and posterior predictives, the arviz export, plots, and the traces above on placeholder
batches — their previous mode given back after (:mod:`pplvm._modes`). So a row's held-out
log-likelihood does not depend on the rows scored with it, and only training steps move a
BatchNorm's running statistics.

Here are the configs and the family; the tracing is :mod:`._pyro_trace` (its :class:`Structure`
and :func:`trace_structure` re-exported here), the wrapper of your own guide :mod:`._pyro_guide`.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Any, Callable, Literal

import pyro
import torch
from pydantic import Field
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites

from .._targets import TARGET_PATTERN, instantiate, resolve
from ..data.base import as_matrix, values
from ..decoders import Activation, Encoder, mlp
from ..errors import CardError, IncompatibleError
from ..inference.importance import importance_log_likelihood
from ._pyro_guide import _CustomGuide
from ._pyro_trace import Structure, _Holder, _ScaleDataPlate, trace_structure
from .base import LIKELIHOOD_SAMPLES, ContinuousLatentModel, FamilyConfig, LatentVariableModel, UserGuide, over_draws

_PARTICLES = "_particles"
#: bound on particles × elements of the data per pass of the mixed-locals estimate
_MAX_ELEMENTS = 2**22


class TracedConfig(FamilyConfig):
    """Fields of every family whose structure is read off a traced model."""

    guide_target: str | None = Field(
        None,
        pattern=TARGET_PATTERN,
        description=(
            "your guide for guide.kind = 'custom', 'package.module:name': a function guide(x) or a PyroModule "
            "(class built with guide_options)"
        ),
    )
    guide_options: dict[str, Any] = Field({}, description="keyword arguments of a PyroModule class guide_target")
    hidden: list[int] = Field([64], description="hidden widths of the amortized encoder over continuous locals")
    activation: Activation = "tanh"
    min_scale: float = Field(1e-3, gt=0, description="floor of the encoder's softplus scale")


class PyroConfig(TracedConfig):
    family: Literal["pyro"] = "pyro"
    target: str | None = Field(
        None,
        pattern=TARGET_PATTERN,
        description=(
            "the model, 'package.module:name': a Pyro model function model(x), a PyroModule, or a PyroModule "
            "class (built with options); unset when passed from Python (pplvm.fit(card, model=...))"
        ),
    )
    options: dict[str, Any] = Field({}, description="keyword arguments of a PyroModule class target")


# ---------------------------------------------------------------------- the family
class PyroModel(LatentVariableModel, UserGuide):
    """A user's Pyro model, traced (see the module docstring). Its guides, objectives, local
    sites and likelihood kind are read off the model, so they are set per instance; the class
    values are what some model may admit."""

    Config = PyroConfig
    indexed_rows = True
    local_sites = ()
    enumerated = False
    likelihood = "exact"

    @classmethod
    def from_config(cls, config: PyroConfig, dim: int, model: Any = None, guide: Any = None) -> "PyroModel":
        if model is None and config.target is None:
            raise CardError(
                "model.target: expected 'package.module:name' of your Pyro model (or pass model= from Python)"
            )
        label = repr(config.target) if model is None else "passed as model="
        user = instantiate(
            model if model is not None else resolve(config.target, "model.target"), config.options, "model.options"
        )
        structure = trace_structure(user, dim, label)
        kind = ContinuousPyroModel if structure.continuous else PyroModel
        return kind(config, dim, user, structure, guide, label)

    def __init__(
        self, config: TracedConfig, dim: int, user: Any, structure: Structure, guide: Any = None, label: str = ""
    ):
        super().__init__(config, dim)
        self.structure = s = structure
        if isinstance(user, torch.nn.Module):
            self.holder = _Holder(user)
            self._fn: tuple[Callable, ...] = (user,)
        else:
            self._fn = (user,)
        self._user_guide_object = guide
        self.observed_site = s.observed
        self.plate_name, self.plate_dim = s.plate, s.plate_dim
        self.max_plate_nesting = s.max_plate_nesting
        self.local_sites = s.discrete + s.continuous
        self.enumerated = bool(s.discrete)
        self.likelihood = "estimate" if s.continuous else "exact"
        self.brings_guide = config.guide_target is not None or guide is not None
        guidable = (not s.not_amortizable) if s.continuous else bool(s.global_sites)
        if not guidable and not self.brings_guide:
            raise CardError(
                f"model {label}: pplvm has no guide for it "
                f"({s.not_amortizable or 'no latent sites to guide'}); give your own: "
                "model.guide_target with guide.kind = 'custom'"
            )
        self.site_dims = {}

    # ----------------------------------------------------------------- the contract
    @property
    def global_sites(self) -> tuple[str, ...]:
        return self.structure.global_sites

    def forward(self, x=None, num_data=None):
        """The user's model on ``x`` ``(B, D)`` (a :class:`~pplvm.data.Batch` is read through
        :func:`~pplvm.data.values`), with every site in the data plate scaled by ``num_data / B``;
        ``x = None`` generates ``num_data`` rows (the observed site sampled)."""
        model = self._enumerated(self._fn[0])
        if x is None:
            if num_data is None:
                raise ValueError("give x, or num_data rows to generate")
            return poutine.uncondition(model)(self.placeholder(num_data))
        obs = self.model_input(x)
        if num_data is not None and num_data != len(obs):
            with _ScaleDataPlate(self.plate_name, num_data / len(obs)):
                return model(obs)
        return model(obs)

    def model_input(self, x):
        """What the model is called on for a batch ``x``: its values ``(B, D)``."""
        return values(x)

    def placeholder(self, n: int):
        """What the model is called on to generate ``n`` rows (its observed site sampled)."""
        return torch.zeros(n, self.dim, device=self.device)

    def _enumerated(self, fn: Callable) -> Callable:
        """``fn`` with its discrete local sites marked for parallel enumeration."""
        if not self.structure.discrete:
            return fn
        discrete = set(self.structure.discrete)
        return poutine.infer_config(fn, lambda site: {"enumerate": "parallel"} if site["name"] in discrete else {})

    @torch.no_grad()
    def log_likelihood(
        self, x, params, *, proposal: Callable | None = None, num_samples: int | None = None, seed: int = 0
    ) -> torch.Tensor:
        """``log p(x_n | θ)``, ``(*S, N)`` for ``params`` batched as ``S`` (``(N,)`` without
        global latents): exact by contracting the enumerated locals when there are no continuous
        ones, else an importance-sampled estimate with ``proposal`` (a guide over the continuous
        local, e.g. the run's amortized guide; default: their prior)."""
        x = self.model_input(x)

        def one(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            model = self.conditioned(theta)
            if self.structure.continuous:
                return self._estimate(model, x, proposal, num_samples, seed)
            return self._contract(model, x)

        return over_draws(params, self.structure.global_shapes, one)

    def _contract(self, model: Callable, x: torch.Tensor, particles: int | None = None) -> torch.Tensor:
        """``log p(x_n | θ)`` ``(N,)``: the data plate's sites with their enumerated locals
        summed out by tensor contraction (as TraceEnum_ELBO does), the plate kept. With
        ``particles``, the model runs inside a particle plate left of its own plates (values of
        conditioned sites carry that dim) and the result is ``(particles, N)``."""
        first = -1 - self.max_plate_nesting - (particles is not None)
        plate = pyro.plate(_PARTICLES, particles, dim=-1 - self.max_plate_nesting) if particles else None
        with plate if plate is not None else contextlib.nullcontext():
            trace = poutine.trace(poutine.enum(model, first_available_dim=first)).get_trace(x)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        trace.pack_tensors()
        factors: OrderedDict = OrderedDict()
        sum_dims: set = set()
        plate_symbols = set(trace.plate_to_symbol.values())
        for site in trace.nodes.values():
            if site["type"] != "sample" or not any(f.name == self.plate_name for f in site["cond_indep_stack"]):
                continue
            ordinal = frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
            factors.setdefault(ordinal, []).append(site["packed"]["unscaled_log_prob"])
            if site["infer"].get("_enumerate_dim") is not None:
                sum_dims |= set(site["packed"]["log_prob"]._pyro_dims) - plate_symbols
        target = frozenset(
            trace.plate_to_symbol[p] for p in (self.plate_name, _PARTICLES) if p in trace.plate_to_symbol
        )
        out = packed.unpack(contract_to_tensor(factors, sum_dims, target_ordinal=target), trace.symbol_to_dim)
        if particles:  # (particles, 1.., N at the data plate's dim)
            return out.reshape(particles, len(x))
        return out.reshape(len(x))

    def _estimate(
        self, model: Callable, x: torch.Tensor, proposal: Callable | None, num_samples: int | None, seed: int
    ) -> torch.Tensor:
        k = num_samples or LIKELIHOOD_SAMPLES
        if self.structure.discrete:
            return self._estimate_mixed(model, x, proposal, k, seed)
        if proposal is not None:  # the run's guide: keep its local site, drop its globals' draws
            plate = self.plate_name
            guide = poutine.block(
                proposal, hide_fn=lambda site: not any(f.name == plate for f in site["cond_indep_stack"])
            )
        else:
            guide = poutine.block(model, hide=[self.observed_site])  # the locals' prior
        est = importance_log_likelihood(
            model, guide, x, k=k, seed=seed, plate=self.plate_name, max_plate_nesting=self.max_plate_nesting
        )
        return est.log_likelihood.to(values(x).dtype)

    def _estimate_mixed(
        self, model: Callable, x: torch.Tensor, proposal: Callable | None, k: int, seed: int
    ) -> torch.Tensor:
        """Discrete and continuous locals: ``log (1/k) Σ_i p(x_n, z_i) / q(z_i | x_n)`` with
        ``z_i ~ q`` and the discrete locals summed out exactly in ``p(x_n, z_i)`` (by contraction,
        one draw at a time). ``(N,)``."""
        if proposal is None:
            raise IncompatibleError(
                "a model with discrete and continuous local latents needs a proposal for "
                "the continuous one (the run's amortized guide) to estimate log p(x)"
            )
        site, plate = self.structure.continuous[0], self.plate_name
        guide = poutine.block(proposal, hide_fn=lambda s: not any(f.name == plate for f in s["cond_indep_stack"]))
        log_w, dim = [], -1 - self.max_plate_nesting
        chunk = max(1, min(k, _MAX_ELEMENTS // max(1, values(x).numel())))
        with poutine.seed(rng_seed=seed):
            for start in range(0, k, chunk):
                size = min(chunk, k - start)
                with pyro.plate(_PARTICLES, size, dim=dim):
                    q = poutine.trace(guide).get_trace(x).nodes[site]
                log_q = q["fn"].log_prob(q["value"])  # (size, N)
                joint = self._contract(poutine.condition(model, data={site: q["value"]}), x, particles=size)
                log_w.append(joint - log_q)
        return (torch.cat(log_w).logsumexp(0) - math.log(k)).to(values(x).dtype)

    def conditioned(self, params):
        return poutine.condition(self, data=params)

    def init_values(self, x, generator):
        return {}

    def prepare(self, data, name="data"):
        return as_matrix(data, name, dim=self.dim)

    def check_data(self, x):
        """Nothing beyond :meth:`prepare`: the model's own distributions check their values."""

    def plots(self, x, params):
        return {}

    # ------------------------------------------------------------------ user guide
    def user_guide(self) -> torch.nn.Module:
        obj = self._user_guide_object
        if obj is None:
            obj = resolve(self.config.guide_target, "model.guide_target")
        guide = _CustomGuide(self, instantiate(obj, self.config.guide_options, "model.guide_options", "guide"))
        guide.check()
        return guide


class ContinuousPyroModel(PyroModel, ContinuousLatentModel):
    """A user's model with one continuous local latent ``(B, L)``: the amortized Gaussian
    encoder (or free per-datum normals) serves it."""

    @property
    def latent_dim(self) -> int:
        return self.structure.continuous_shapes[self.latent_site][0]

    @property
    def latent_site(self) -> str:
        return self.structure.continuous[0]

    def local_marginals(self, x, params):
        if self.structure.discrete:
            raise IncompatibleError(
                f"the posterior of {', '.join(self.structure.discrete)} given x also depends "
                f"on the continuous {self.latent_site!r}; pplvm gives no closed form for it"
            )
        return super().local_marginals(x, params)

    def map_locals(self, x, params):
        if self.structure.discrete:
            raise IncompatibleError(
                f"the most probable {', '.join(self.structure.discrete)} given x also depend "
                f"on the continuous {self.latent_site!r}; pplvm gives no closed form for them"
            )
        return super().map_locals(x, params)

    def amortization(self) -> str:
        return self.structure.not_amortizable

    def make_encoder(self) -> torch.nn.Module:
        c = self.config
        return Encoder(torch.nn.Identity(), mlp(self.dim, c.hidden, 2 * self.latent_dim, c.activation), c.min_scale)
