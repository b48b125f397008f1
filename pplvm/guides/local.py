"""Base of the guides that add a per-datum ``q(z_n | x_n)`` to a guide of the globals.

``q(θ, z | x) = q(θ) Π_n q(z_n | x_n, θ)``. Subclasses (:class:`~pplvm.guides.amortized.AmortizedNormal`,
:class:`~pplvm.guides.exact.ExactLocalGuide`, :class:`MeanFieldLocal`) say how
``q(z_n | x_n, θ)`` is formed; this
base holds the globals' guide (an autoguide, or None when the family has no global latents),
so that posterior draws of θ never need data.
"""

from __future__ import annotations

import abc

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.util import is_validation_enabled

from ..data.base import Batch
from ..errors import IncompatibleError
from ..families.base import ContinuousLatentModel, _AbstractPyroModuleMeta


class LocalGuide(PyroModule, metaclass=_AbstractPyroModuleMeta):
    """A guide over continuous local latents (one site, ``(N, L)``) plus ``globals_guide``."""

    def __init__(self, model: ContinuousLatentModel, globals_guide: torch.nn.Module | None = None):
        super().__init__()
        self._model = (model,)  # not a submodule: the model's parameters belong to the model
        self.site = model.latent_site
        self.globals_guide = globals_guide

    @abc.abstractmethod
    def local_posterior(self, x: torch.Tensor) -> torch.distributions.Distribution:
        """``q(z_n | x_n)`` at the globals' point estimate: batch shape ``(N,)``, event ``(L,)``."""

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Point estimate of the global latents (empty when the family has none)."""
        return self.globals_guide.median() if self.globals_guide is not None else {}


class MeanFieldLocal(LocalGuide):
    """``q(z_n) = Normal(m_n, diag s_n)`` with free parameters for each of the ``num_data``
    training data (non-amortized mean-field VI), plus ``globals_guide``.

    Batches must carry their training-set rows (``Batch.index``): the run's training data
    does. Having no encoder, it holds ``q(z_n)`` for the training data only; other data are
    scored through a q of their own fitted by :meth:`fitted_to`.
    """

    def __init__(
        self,
        model: ContinuousLatentModel,
        num_data: int,
        globals_guide: torch.nn.Module | None = None,
        init_scale: float = 0.1,
    ):
        super().__init__(model, globals_guide)
        self._init_scale = float(init_scale)
        shape = (int(num_data), model.latent_dim)
        self.loc = PyroParam(torch.zeros(shape))
        self.scale = PyroParam(torch.full(shape, float(init_scale)), constraint=constraints.positive)

    def forward(self, x, num_data=None):
        if self.globals_guide is not None:
            self.globals_guide(x, num_data)
        q = self.local_posterior(x)
        with self._model[0].data_plate(x, num_data):
            return pyro.sample(self.site, q)

    def local_posterior(self, x) -> torch.distributions.Distribution:
        rows = self._rows(x)
        return dist.Normal(self.loc[rows], self.scale[rows]).to_event(1)

    def fitted_to(
        self, x, params: dict[str, torch.Tensor], *, steps: int, lr: float, seed: int = 0
    ) -> "MeanFieldLocal":
        """A new ``q(z_n)`` over the rows of ``x`` (numbered ``0 .. N-1`` by ``x``'s ``Batch.index``;
        no globals' guide): ``steps`` Adam steps (learning rate ``lr``) on the ELBO of the model
        with its global latents fixed at ``params``, from ``q(z_n) = N(0, init_scale²)``. Only the
        new q's parameters move; the model's and this guide's stay as they are. Seeded: the
        global RNG is left as it was."""
        model = self._model[0]
        q = MeanFieldLocal(model, len(x), init_scale=self._init_scale)
        q = q.to(self.loc.device)
        conditioned = model.conditioned({k: v.detach() for k, v in params.items()})
        elbo = TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting) if model.enumerated else Trace_ELBO()
        weights = list(q.parameters())
        optimizer = torch.optim.Adam(weights, lr=lr)
        with poutine.seed(rng_seed=seed), torch.enable_grad():
            for step in range(steps):
                with pyro.validation_enabled(is_validation_enabled() and step == 0):  # checked once, as training is
                    loss = elbo.differentiable_loss(conditioned, q, x)
                grads = torch.autograd.grad(loss, weights)  # not .backward(): the model's own grads stay untouched
                for w, g in zip(weights, grads):
                    w.grad = g
                optimizer.step()
        return q

    def training_posterior(self) -> torch.distributions.Distribution:
        """``q(z_n)`` of every training datum, in training-set order: batch ``(N,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)

    def _rows(self, x) -> torch.Tensor:
        if not isinstance(x, Batch) or x.index is None:
            raise IncompatibleError(
                "guide.kind = 'meanfield' holds q(z_n) for the training data only (no encoder): it "
                "cannot infer the latents of other data; use guide.kind = 'amortized' or 'exact'"
            )
        # a host sync: checked where Pyro validates (the first step of a fit, and queries)
        if is_validation_enabled() and len(x.index) and int(x.index.max()) >= len(self.loc):
            raise IncompatibleError(
                f"row {int(x.index.max())} is outside the {len(self.loc)} training data "
                "this mean-field guide was built for"
            )
        return x.index
