"""The marginal likelihood of a traced user model (:mod:`.pyro_model`): its enumerated locals
summed out by tensor contraction, its continuous ones by importance sampling with the run's
guide as proposal (both at once when it has both)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites

from ..data.base import values
from ..errors import IncompatibleError
from ..inference.importance import importance_log_likelihood
from ._pyro_posterior import PARTICLES, local_draws
from ._pyro_trace import _auxiliary
from .base import LIKELIHOOD_SAMPLES


class LocalMarginals:
    """``log p(x_n | θ)`` of a traced model with its local latents marginalised (a mixin of
    :class:`~.pyro_model.PyroModel`, which supplies ``structure``, ``plate_name`` and
    ``max_plate_nesting``)."""

    def _contract(
        self, model: Callable, x: torch.Tensor, particles: int | None = None, keep: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``log p(x_n | θ)`` ``(N,)``: the data plate's sites with their enumerated locals
        summed out by tensor contraction (as TraceEnum_ELBO does), the plate kept. With
        ``particles``, the model runs inside a particle plate left of its own plates (values of
        conditioned sites carry that dim) and the result is ``(particles, N)``. With ``keep``
        (an enumerated site in the data plate alone), its K values are kept: ``log p(x_n, keep
        = v)`` up to a constant per datum (Pyro's contraction leaves out the factors that do not
        touch the kept site), ``(..., N, K)``, returned with the values ``(K, *event_shape)``."""
        first = -1 - self.max_plate_nesting - (particles is not None)
        plate = pyro.plate(PARTICLES, particles, dim=-1 - self.max_plate_nesting) if particles else None
        with plate if plate is not None else contextlib.nullcontext():
            trace = poutine.trace(poutine.enum(model, first_available_dim=first)).get_trace(x)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        _normalize_masked(trace)
        trace.pack_tensors()
        factors: OrderedDict = OrderedDict()
        sum_dims: set = set()
        plate_symbols = set(trace.plate_to_symbol.values())
        for site in trace.nodes.values():
            if not _scored(site, self.plate_name):
                continue
            ordinal = frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
            # unscaled (a minibatch scale is not the datum's), masked and normalised: _normalize_masked
            factors.setdefault(ordinal, []).append(site["packed"]["unscaled_log_prob"])
            if site["infer"].get("_enumerate_dim") is not None:
                sum_dims |= set(site["packed"]["log_prob"]._pyro_dims) - plate_symbols
        order = [trace.plate_to_symbol[p] for p in (PARTICLES, self.plate_name) if p in trace.plate_to_symbol]
        sizes = ([particles] if particles else []) + [len(x)]
        kept, support = _kept(trace, keep, self.plate_name) if keep is not None else (None, None)
        out = contract_to_tensor(
            factors, sum_dims, target_ordinal=frozenset(order), target_dims={kept} if kept else None
        )
        if kept:
            order, sizes = order + [kept], sizes + [len(support)]
        out = _arranged(out, order, sizes)
        return out if keep is None else (out, support)

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
            guide = poutine.block(model, hide_fn=lambda site: site["is_observed"])  # the locals' prior
        est = importance_log_likelihood(
            model, guide, x, k=k, seed=seed, plate=self.plate_name, max_plate_nesting=self.max_plate_nesting
        )
        return est.log_likelihood.to(values(x).dtype)

    def _estimate_mixed(
        self, model: Callable, x: torch.Tensor, proposal: Callable | None, k: int, seed: int
    ) -> torch.Tensor:
        """Discrete and continuous locals: ``log (1/k) Σ_i p(x_n, u_i) / q(u_i | x_n)`` with
        ``u_i ~ q`` the local sites the proposal draws (without one, the prior of every local
        site) and the other discrete locals summed out exactly in ``p(x_n, u_i)`` (by
        contraction): :mod:`._pyro_posterior`. ``(N,)``."""
        draws = local_draws(self, model, x, proposal, k, seed, marginals=False)
        return draws.log_marginal().to(values(x).dtype)


def _scored(site, plate: str) -> bool:
    """A site of ``log p(x_n | θ)``: sampled in the data plate, not a ``pyro.factor`` term."""
    return site["type"] == "sample" and not _auxiliary(site) and any(f.name == plate for f in site["cond_indep_stack"])


def _normalize_masked(trace) -> None:
    """Each site's unscaled log-prob masked as the site says (Pyro keeps it unmasked; the
    minibatch scale stays out), and each enumerated site's factor given total mass one over its
    own values: a masked site (a padded time step, the latent half of ``obs_mask``) has
    log-prob 0 for every one of its K values, and summing them out would add ``log K`` per masked
    entry; a normalised distribution is left as it is (its values' masses already add to one)."""
    for site in trace.nodes.values():
        if site["type"] != "sample" or "unscaled_log_prob" not in site:
            continue
        log_p = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
        dim = site["infer"].get("_enumerate_dim")
        if dim is not None:
            norm = log_p.logsumexp(dim, keepdim=True)
            log_p = torch.where(norm.isfinite(), log_p - norm, log_p)
        site["unscaled_log_prob"] = log_p


def _kept(trace, name: str, plate: str) -> tuple[str, torch.Tensor]:
    """The enumeration symbol of the site ``name`` and its values ``(K, *event_shape)``."""
    site = trace.nodes[name]
    others = [f.name for f in site["cond_indep_stack"] if f.vectorized and f.name not in (plate, PARTICLES)]
    if others or site["infer"].get("_enumerate_dim") is None:
        raise IncompatibleError(
            f"site {name!r}: pplvm estimates the posterior of enumerated sites in the data plate alone"
            + (f" (it is also in plate(s) {', '.join(others)})" if others else "")
        )
    fn = site["fn"]
    support = fn.enumerate_support(expand=False)
    return site["infer"]["_enumerate_symbol"], support.reshape(len(support), *fn.event_shape)


def _arranged(t: torch.Tensor, order: list[str], sizes: list[int]) -> torch.Tensor:
    """A packed tensor with its dims (symbols) in ``order``, broadcast to ``sizes``."""
    present = getattr(t, "_pyro_dims", "")
    t = t.permute(*[present.index(s) for s in order if s in present])
    return t.reshape([size if s in present else 1 for s, size in zip(order, sizes)]).expand(sizes)
