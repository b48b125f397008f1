"""Mechanics shared by the pathwise estimators (:mod:`.stl`, :mod:`.dreg`).

Both need ``log q_φ(z)`` evaluated at the guide's reparameterised draw ``z = z(ε, φ)`` with the
*parameters* φ stopped but the *value* z live, so that the gradient reaches φ only through the
path ``∂/∂z log q · ∂z/∂φ`` and the score term ``∂/∂φ log q`` is gone. Pyro distributions have
no ``detach()`` (pytorch/pytorch#25783), so instead of rebuilding each distribution with
detached arguments the guide is run a second time with its parameters detached
(:func:`torch.func.functional_call` for module parameters, a handler for ``pyro.param``
statements) while replaying the first run's values. This is exact for any guide, including
structured ones where a later site's distribution depends on an earlier draw: that dependence
stays differentiable, only φ is stopped.

Cost: one extra forward pass of the guide (no backward through its parameters) when gradients
are on; none under ``torch.no_grad`` (evaluation), where only the values are needed.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape

from ..errors import IncompatibleError


class _StopParams(Messenger):
    """Detach the value of every ``pyro.param`` statement (global store or PyroModule)."""

    def _pyro_post_param(self, msg) -> None:
        msg["value"] = msg["value"].detach()


def stopped_guide(guide: Callable) -> Callable:
    """``guide`` with every parameter detached: the same distributions, no gradient to φ."""
    params = {name: p.detach() for name, p in guide.named_parameters()} if isinstance(guide, torch.nn.Module) else {}

    def fn(*args, **kwargs):
        with _StopParams():
            if params:
                return torch.func.functional_call(guide, params, args, kwargs, strict=False)
            return guide(*args, **kwargs)

    return fn


def check_reparameterised(guide_trace, model_trace, estimator: str) -> None:
    """Refuse guide sites without ``rsample`` and enumerated model sites, naming them."""
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
            raise IncompatibleError(
                f"{estimator} needs a fully reparameterised guide, but guide site {name!r} "
                f"({type(site['fn']).__name__}) has no rsample; use objective.name = 'elbo' or 'iwae'"
            )
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["infer"].get("enumerate") and name not in guide_trace.nodes:
            raise IncompatibleError(
                f"{estimator} cannot sum out the enumerated discrete latent {name!r}; use objective.name = 'enum'"
            )


def pathwise_traces(elbo, model, guide, args, kwargs, *, views: bool = False) -> Iterator[tuple]:
    """Yield ``(model_trace, stopped_guide_trace, values)`` per (vectorised) particle batch.

    The stopped guide trace has the guide's log-densities (same values) with φ stopped, and
    its score parts say so (``entropy_term`` = stopped log q), so Pyro's own ELBO code reads
    it as a guide trace. With ``views``, the model and the stopped guide see a fresh view
    ``z'`` of every latent draw (returned in ``values`` as ``(z', event_dim)``), on which a
    gradient hook can act without touching the guide's own use of ``z`` (structured guides).
    """
    stopped = stopped_guide(guide)
    if elbo.vectorize_particles:
        if elbo.max_plate_nesting == float("inf"):
            elbo._guess_max_plate_nesting(model, guide, args, kwargs)
        model, guide, stopped = (elbo._vectorized_num_particles(f) for f in (model, guide, stopped))
        yield _one_trace(elbo, model, guide, stopped, args, kwargs, views)
    else:
        for _ in range(elbo.num_particles):
            yield _one_trace(elbo, model, guide, stopped, args, kwargs, views)


def _one_trace(elbo, model, guide, stopped, args, kwargs, views):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    values = []
    if views:
        guide_trace = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and site["value"].requires_grad:
                site = guide_trace.nodes[name] = dict(site)
                site["value"] = site["value"].view_as(site["value"])
                values.append((site["value"], site["fn"].event_dim))
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    if torch.is_grad_enabled():
        stopped_trace = poutine.trace(poutine.replay(stopped, trace=guide_trace)).get_trace(*args, **kwargs)
        for name, site in guide_trace.nodes.items():  # Pyro's loss_and_grads looks for param sites
            if site["type"] == "param" and name not in stopped_trace.nodes:
                stopped_trace.add_node(name, **site)
    else:  # values only (evaluation): the guide's own trace has the same log-densities
        stopped_trace = guide_trace
    check_reparameterised(stopped_trace, model_trace, type(elbo).__name__)
    if is_validation_enabled():
        check_model_guide_match(model_trace, stopped_trace, elbo.max_plate_nesting)
    model_trace = prune_subsample_sites(model_trace)
    stopped_trace = prune_subsample_sites(stopped_trace)
    model_trace.compute_log_prob()
    stopped_trace.compute_score_parts()
    if is_validation_enabled():
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                check_site_shape(site, elbo.max_plate_nesting)
        for site in stopped_trace.nodes.values():
            if site["type"] == "sample":
                check_site_shape(site, elbo.max_plate_nesting)
    return model_trace, stopped_trace, values


def subsample_factor(sites) -> float:
    """Product of ``full_size / size`` over the plates every site shares (a data plate's
    ``N / B`` under minibatching): each log-density carries it, and a bound that is nonlinear in
    the log-weights (IWAE) must take it out before the log-mean-exp and apply it after."""
    plates = [{f for f in s["cond_indep_stack"] if f.full_size is not None} for s in sites]
    common = set.intersection(*plates) if plates else set()
    return math.prod(f.full_size / f.size for f in common)


def sum_to_plates(log_prob: torch.Tensor, sum_dims: list[int], ndim: int) -> torch.Tensor:
    """Sum ``log_prob`` over ``sum_dims`` keeping them as size 1, left-padded to ``ndim`` dims,
    so that sums of sites with different plates broadcast against each other."""
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    return log_prob.sum(sum_dims, keepdim=True) if sum_dims else log_prob


__all__ = ["check_reparameterised", "pathwise_traces", "stopped_guide", "subsample_factor", "sum_to_plates"]
