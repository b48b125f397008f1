"""The marginal likelihood of a traced user model (:mod:`.pyro_model`): its enumerated locals
summed out by tensor contraction, its continuous ones by importance sampling with the run's
guide as proposal (both at once when it has both)."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites

from ..data.base import values
from ..errors import IncompatibleError
from ..inference.importance import importance_log_likelihood
from ._pyro_trace import _auxiliary
from .base import LIKELIHOOD_SAMPLES

_PARTICLES = "_particles"
#: bound on particles × elements of the data per pass of the mixed-locals estimate
_MAX_ELEMENTS = 2**22


class LocalMarginals:
    """``log p(x_n | θ)`` of a traced model with its local latents marginalised (a mixin of
    :class:`~.pyro_model.PyroModel`, which supplies ``structure``, ``plate_name`` and
    ``max_plate_nesting``)."""

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
        _normalize_masked(trace)
        trace.pack_tensors()
        factors: OrderedDict = OrderedDict()
        sum_dims: set = set()
        plate_symbols = set(trace.plate_to_symbol.values())
        for site in trace.nodes.values():
            if not _scored(site, self.plate_name):
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
            guide = poutine.block(model, hide_fn=lambda site: site["is_observed"])  # the locals' prior
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
