"""The ELBO with the "sticking the landing" gradient estimator (Roeder, Wu & Duvenaud 2017).

For a reparameterised guide ``z = z(ε, φ)`` the total derivative of
``log w = log p(x, z) − log q_φ(z)`` is

    ∇_φ log w = (∂_z log p − ∂_z log q_φ) ∂_φ z  −  ∂_φ log q_φ(z)|_z fixed.

The last (score) term has expectation zero; STL drops it by evaluating ``log q`` with φ
stopped. The objective and its value are Pyro's :class:`~pyro.infer.Trace_ELBO` unchanged;
only the gradient estimator differs. When ``q`` equals the exact posterior, ``log w`` is
constant in ``z`` and the STL guide gradient is exactly zero for every draw ("sticks the
landing"), while the standard estimator's variance is not.
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO

from ..errors import CardError
from ._pathwise import pathwise_traces
from .svi import SVIObjective


class TraceSTL_ELBO(Trace_ELBO):
    """:class:`~pyro.infer.Trace_ELBO` with the path-derivative (STL) guide gradient.

    Subclassed as Pyro's CEVAE subclasses Trace_ELBO: only the traces change. The guide trace
    handed to Trace_ELBO holds ``log q`` with the guide's parameters stopped (same values), so
    its surrogate differentiates ``log q`` through ``z`` only. Model parameters get the
    ordinary gradient. Needs a fully reparameterised guide (checked on every call).
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
    ):
        if int(num_particles) < 1:
            raise CardError(f"num_particles = {num_particles}: expected an integer >= 1")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    def _get_traces(self, model, guide, args, kwargs):
        for model_trace, stopped_trace, _ in pathwise_traces(self, model, guide, args, kwargs):
            yield model_trace, stopped_trace


class STL(SVIObjective):
    r"""The ELBO with the sticking-the-landing (STL) guide gradient (same value as ``elbo``).

    **Estimator** (Roeder et al. 2017). For :math:`z = z(\epsilon, \phi)`,
    :math:`\nabla_\phi \log w = (\partial_z \log p - \partial_z \log q_\phi)\, \partial_\phi z
    - \partial_\phi \log q_\phi(z)\big|_{z}`; STL drops the last (score) term, whose expectation
    is zero, by evaluating :math:`\log q` with φ stopped. The value is Pyro's ``Trace_ELBO``'s;
    when q is the exact posterior the guide gradient is exactly zero for every draw.

    **Needs** every guide site reparameterised (checked by tracing the guide) and no enumerated
    locals.
    """

    names = ("stl",)
    pathwise = True

    def elbo(self, model) -> TraceSTL_ELBO:
        return TraceSTL_ELBO(**self.particles(model))


__all__ = ["STL", "TraceSTL_ELBO"]
