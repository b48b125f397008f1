"""Your own Pyro model as a family (``model.family = "pyro"``): :class:`PyroModel`, traced by
:mod:`._pyro_trace` (:class:`Structure`, :func:`trace_structure` re-exported here)."""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from pydantic import Field
from pyro import poutine

from .._modes import evaluating
from .._targets import TARGET_PATTERN, instantiate, resolve
from ..data.base import Batch, values
from ..decoders import Activation, Encoder, mlp
from ..decoders.sites import SiteEncoder
from ..errors import CardError, IncompatibleError
from ._pyro_guide import _CustomGuide
from ._pyro_inputs import Caller, missing_like
from ._pyro_inputs import prepare as prepare_data
from ._pyro_likelihood import LocalMarginals
from ._pyro_posterior import local_draws
from ._pyro_sites import local_layout
from ._pyro_trace import Structure, _Holder, _ScaleDataPlate, time_steps, trace_structure
from .base import (
    LIKELIHOOD_SAMPLES,
    ContinuousLatentModel,
    FamilyConfig,
    LatentVariableModel,
    LocalLayout,
    LocalSites,
    UserGuide,
    over_draws,
)


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
    rnn_hidden: int = Field(64, ge=1, description="state size of the amortized guide's GRU over sequences")
    activation: Activation = Field("tanh", description="nonlinearity of the amortized encoder's hidden layers")
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
class PyroModel(LocalMarginals, LatentVariableModel, UserGuide):
    r"""Your own Pyro model as a family: ``model.target = "pkg.module:name"``, or ``model=`` from Python.

    The target is a model function ``model(x)`` or a ``PyroModule`` (an instance, or a class
    built with ``model.options``), ``x`` a ``(B, D)`` batch of rows. Beside ``x`` it takes, by
    keyword, what the data carry and its signature names: ``lengths`` and ``mask`` of
    sequences, labels ``y`` with ``y_mask`` (missing ones latent), named inputs (covariates,
    groups). pplvm traces it on the data's first rows at two batch sizes and reads off the
    *data plate* (the plate around the observed sites whose size follows the batch), the
    *observed* sites, the *global* latents θ (outside it) and the *local* ones (inside it).

    **Prior and likelihood** are the model's own: :math:`p(\theta) \prod_n p(z_n \mid \theta)
    p(x_n \mid z_n, \theta)`, every site in the data plate scaled by N / B on a minibatch.
    ``pyro.factor`` terms (auxiliary losses) count in training, never in :math:`\log p(x)`.

    **Marginal: exact or estimated**, as the locals are. Discrete locals with finite support are
    summed out by enumeration (tensor contraction, as ``TraceEnum_ELBO``): with no other
    locals ``log_likelihood`` returns the exact :math:`\log p(x_n \mid \theta)`. Continuous locals
    u (real support, each ``(B, L)`` or one per time step) make it ``"estimate"``: the
    importance-sampled :math:`\log \frac1S \sum_s p(x_n, u_s \mid \theta)/q(u_s \mid x_n)` with the
    run's guide as proposal, the discrete locals summed out inside :math:`p(x_n, u_s \mid \theta)`;
    their posterior (``run.posterior``) is then importance-sampled too, with standard errors.

    **Latent structure → guides and objectives.** Globals: an autoguide (``map``, ``meanfield``,
    ``lowrank``, ``flow``, every Pyro ``Auto*`` by name). Enumerated locals: objective ``enum``
    (Pyro's ``TraceEnum_ELBO``). One continuous local ``(B, L)``: ``amortized`` (an encoder),
    ``meanfield`` (free normals per training row), ``flow``; with no enumerated site beside it the
    SVI objectives over reparameterised sites (``elbo``, ``iwae``, ``stl`` ...). Several, or per step
    (``z_1 .. z_T``): ``amortized`` site by site, a backward GRU over the sequence for the steps.
    Anything else — your own guide (``model.guide_target``, ``guide=``, or a ``guide`` method of
    the module) with ``guide.kind = "custom"``. Refusals name the site and the reason.

    **Rules.** ``x`` enters only as the observation (covariates are named inputs; a model whose
    sites change with x's values is refused, since new data are generated by running it on
    the first rows with its observations sampled); parameters live in ``PyroModule`` /
    ``PyroParam`` attributes, never ``pyro.param``; networks run in ``.train()`` for training
    steps only and ``.eval()`` for everything else, the probes included (:mod:`pplvm._modes`).

    **Card.** ``model.target`` and ``options``; ``guide_target``; the amortized encoder's
    ``hidden``, ``rnn_hidden``, ``activation``. From ``examples/pyro_classics/mixed_regression.toml``:

    .. code-block:: toml

        [model]
        family = "pyro"
        target = "examples.pyro_classics.mixed_regression:MixedRegression"
        options = { components = 2, covariates = 2, groups = 8 }

        [guide]
        kind = "AutoNormal"            # or "map" (AutoDelta): point estimates of the globals

        [objective]
        name = "enum"                  # or "TraceEnum_ELBO" with its own options
    """

    Config = PyroConfig
    indexed_rows = True
    takes_labels = True
    local_sites = ()
    enumerated = False
    likelihood = "exact"

    @classmethod
    def from_config(
        cls, config: PyroConfig, dim: int, model: Any = None, guide: Any = None, example: Any = None
    ) -> "PyroModel":
        if model is None and config.target is None:
            raise CardError(
                "model.target: expected 'package.module:name' of your Pyro model (or pass model= from Python)"
            )
        label = repr(config.target) if model is None else "passed as model="
        user = instantiate(
            model if model is not None else resolve(config.target, "model.target"), config.options, "model.options"
        )
        caller = Caller.of(user, f"model {label}")
        rows = _examples(None if example is None else prepare_data(example, "data (training split)", dim), dim)
        rows = caller.trim(rows)
        caller.check(rows)
        with evaluating(user):  # the probes run in eval mode (BatchNorm on a few rows)
            structure = trace_structure(
                caller, lambda n: rows[torch.arange(n) % len(rows)], label, module=isinstance(user, torch.nn.Module)
            )
        kind = ContinuousPyroModel if structure.continuous else PyroModel
        return kind(config, dim, user, structure, guide, label, example=rows)

    def __init__(
        self,
        config: TracedConfig,
        dim: int,
        user: Any,
        structure: Structure,
        guide: Any = None,
        label: str = "",
        example: Any = None,
    ):
        super().__init__(config, dim)
        self.structure = s = structure
        if isinstance(user, torch.nn.Module):
            self.holder = _Holder(user)
        self._fn = (self.caller(user, f"model {label}"),)
        #: the data's first rows (CPU): what new data are generated beside (lengths, inputs)
        self.example = _examples(example, dim)
        self._user_guide_object = guide
        self.observed_sites = s.observed
        self.observed_site = s.observed[0]
        self.plate_name, self.plate_dim = s.plate, s.plate_dim
        self.max_plate_nesting = s.max_plate_nesting
        self.local_sites = s.discrete + s.continuous
        self.enumerated = bool(s.discrete)
        self.likelihood = "estimate" if s.continuous else "exact"
        self.marginals = "estimate" if s.continuous and s.discrete else "exact"
        self.guide_draws_locals = bool(s.continuous)  # the user's guide is checked to draw them
        # a module with a guide method of its own (as Pyro's examples write them) brings its guide
        own = isinstance(user, torch.nn.Module) and callable(getattr(user, "guide", None))
        self.brings_guide = config.guide_target is not None or guide is not None or own
        #: its continuous local sites, as the amortized guide serves them
        self.layout = local_layout(self) if s.continuous else LocalLayout()
        guidable = (not self.layout.refusal) if s.continuous else bool(s.global_sites)
        if not guidable and not self.brings_guide:
            raise CardError(
                f"model {label}: pplvm has no guide for it "
                f"({self.layout.refusal or 'no latent sites to guide'}); give your own: "
                "model.guide_target with guide.kind = 'custom'"
            )
        self.site_dims = {}

    @staticmethod
    def caller(user: Any, label: str) -> Caller:
        """How the model is called on a batch (:mod:`._pyro_inputs`)."""
        return Caller.of(user, label)

    # ----------------------------------------------------------------- the contract
    @property
    def global_sites(self) -> tuple[str, ...]:
        return self.structure.global_sites

    @property
    def discrete_sites(self) -> tuple[str, ...]:
        return self.structure.discrete

    def forward(self, x=None, num_data=None):
        """The user's model on the batch ``x`` (``(B, D)`` rows, or a :class:`~pplvm.data.Batch`
        of sequences / with inputs, passed as :mod:`._pyro_inputs` says), with every site in
        the data plate scaled by ``num_data / B``; ``x = None`` generates ``num_data`` data
        beside the example rows' inputs (the observed sites sampled)."""
        model = self._enumerated(self._fn[0])
        if x is None:
            if num_data is None:
                raise ValueError("give x, or num_data rows to generate")
            return poutine.uncondition(model)(self.placeholder(num_data))
        batch = self.model_input(x)
        if num_data is not None and num_data != len(batch):
            with _ScaleDataPlate(self.plate_name, num_data / len(batch)):
                return model(batch)
        return model(batch)

    def model_input(self, x):
        """What the model is called on for a batch ``x``: it without the training rows' numbers."""
        if isinstance(x, Batch) and x.index is not None:
            x = x.replace(index=None)
            return x if x.lengths is not None or x.y is not None or x.inputs else x.x
        return x

    def placeholder(self, n: int):
        """What the model is called on to generate ``n`` data: the example rows in turn, their
        values zeroed (its observed sites are sampled), their lengths and inputs kept."""
        rows = self.example[torch.arange(n) % len(self.example)]
        rows = rows.replace(x=torch.zeros_like(rows.x)) if isinstance(rows, Batch) else torch.zeros_like(rows)
        return rows.to(self.device)

    def observations(self, trace, like) -> torch.Tensor:
        """The data a trace's observed sites hold, shaped like ``values(like)``: the one site holding
        them, or one site per time step stacked along time."""
        shape = values(like).shape
        for name in self.observed_sites:
            if len(self.observed_sites) == 1 or tuple(trace.nodes[name]["value"].shape) == tuple(shape):
                return trace.nodes[name]["value"]
        for names in time_steps(self.observed_sites).values():
            steps = torch.stack([trace.nodes[n]["value"] for n in names if n in trace.nodes], 1)
            if steps.shape[:2] == shape[:2]:
                return torch.cat([steps, steps.new_zeros(shape[0], shape[1] - steps.shape[1], *shape[2:])], 1)
        raise IncompatibleError(
            f"the model's observed sites ({', '.join(self.observed_sites)}) hold no value of the data's "
            f"shape {tuple(shape)}: pplvm cannot put its draws together as data"
        )

    @torch.no_grad()
    def sample(self, n, params):
        trace = poutine.trace(self.conditioned(params)).get_trace(None, num_data=n)
        return self.observations(trace, self.placeholder(n))

    @torch.no_grad()
    def replicate(self, x, params):
        trace = poutine.trace(poutine.condition(poutine.uncondition(self), data=params)).get_trace(x)
        return self.observations(trace, x)

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
        local, e.g. the run's amortized guide; default: their prior). The proposal gets ``x`` as
        it is (a per-datum guide reads the rows' ``Batch.index``); the model, without the index."""
        rows = self.model_input(x)

        def one(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            model = self.conditioned(theta)
            if self.structure.continuous:
                return self._estimate(model, x if proposal is not None else rows, proposal, num_samples, seed)
            return self._contract(model, rows)

        return over_draws(params, self.structure.global_shapes, one)

    def conditioned(self, params):
        return poutine.condition(self, data=params)

    def init_values(self, x, generator):
        return {}

    def prepare(self, data, name="data"):
        """``data`` checked as the model takes them (:func:`._pyro_inputs.prepare`); labels
        the training data had and ``data`` lack are given as missing (the model infers them)."""
        batch = self._fn[0].trim(prepare_data(data, name, self.dim))
        if isinstance(self.example, Batch) and self.example.y is not None and getattr(batch, "y", None) is None:
            batch = batch if isinstance(batch, Batch) else Batch(batch)
            batch = batch.replace(y=missing_like(self.example.y, len(batch)))
        self._fn[0].check(batch)
        return batch

    def check_data(self, x):
        """Nothing beyond :meth:`prepare`: the model's own distributions check their values."""

    def plots(self, x, params):
        return {}

    # ------------------------------------------------------------------ user guide
    def user_guide(self) -> torch.nn.Module:
        obj = self._user_guide_object
        if obj is None and self.config.guide_target is None:  # the model's own guide method
            obj = self.holder.module.guide
        elif obj is None:
            obj = resolve(self.config.guide_target, "model.guide_target")
        guide = _CustomGuide(self, instantiate(obj, self.config.guide_options, "model.guide_options", "guide"))
        guide.check()
        return guide


def _examples(example: Any, dim: int, rows: int = 256):
    """The first ``rows`` data the model is probed on and generates beside (zeros without data)."""
    if example is None:
        return torch.zeros(5, dim)
    example = example.replace(index=None) if isinstance(example, Batch) else example
    return example[:rows].to("cpu")


class ContinuousPyroModel(PyroModel, ContinuousLatentModel, LocalSites):
    """A user's model with continuous local latents: one ``(B, L)`` the amortized Gaussian
    encoder (or free per-datum normals) serves; several, or one per time step of a sequence,
    the amortized guide serves site by site (:class:`~.capabilities.LocalSites`)."""

    @property
    def latent_dim(self) -> int:
        return self.structure.continuous_shapes[self.latent_site][0]

    @property
    def latent_site(self) -> str:
        return self.structure.continuous[0]

    @torch.no_grad()
    def local_marginals(self, x, params, *, proposal=None, num_samples=None, seed=0):
        """With discrete local sites beside the continuous ones, no closed form exists: the
        importance-sampling estimate of ``p(d = v | x_n, θ)`` (:mod:`._pyro_posterior`, the
        ``proposal`` being the run's guide; ``num_samples`` draws per datum), each site ``d``
        ``(N, K)`` with its standard error under ``"<d>_stderr"``."""
        if not self.structure.discrete:
            return super().local_marginals(x, params)
        probs, stderr = self._draws(x, params, proposal, num_samples, seed).marginals()
        dtype = values(x).dtype
        return {k: v.to(dtype) for k, v in probs.items()} | {f"{k}_stderr": v.to(dtype) for k, v in stderr.items()}

    @torch.no_grad()
    def map_locals(self, x, params, *, proposal=None, num_samples=None, seed=0):
        """Each discrete local site's most probable value under :meth:`local_marginals` (site
        by site, not the joint mode), ``(N, *event_shape)``."""
        if not self.structure.discrete:
            return super().map_locals(x, params)
        return self._draws(x, params, proposal, num_samples, seed).modes()

    def _draws(self, x, params, proposal, num_samples, seed):
        model, x = self.conditioned(params), self.model_input(x)
        return local_draws(self, model, x, proposal, num_samples or LIKELIHOOD_SAMPLES, seed)

    def amortization(self) -> str:
        return self.structure.not_amortizable

    def make_encoder(self) -> torch.nn.Module:
        c = self.config
        return Encoder(_Values(), mlp(self.dim, c.hidden, 2 * self.latent_dim, c.activation), c.min_scale)

    def local_layout(self) -> LocalLayout:
        return self.layout

    def make_local_encoder(self, layout: LocalLayout) -> torch.nn.Module:
        c = self.config
        return SiteEncoder(
            self.dim,
            dict(layout.rows),
            {s.stem: s.dim for s in layout.steps},
            sequences=layout.sequences,
            hidden=c.hidden,
            rnn_hidden=c.rnn_hidden,
            activation=c.activation,
            min_scale=c.min_scale,
        )


class _Values(torch.nn.Module):
    """The encoder's trunk: the batch's values (a :class:`~pplvm.data.Batch` with labels or
    inputs reads as its ``x``)."""

    def forward(self, x):
        return values(x)
