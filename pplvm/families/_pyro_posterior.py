"""Importance sampling over the local latents of a traced user model (:mod:`.pyro_model`) where
no closed form exists: log p(x_n | θ) and the posterior of its discrete local sites when the
model also has continuous ones (e.g. the semi-supervised VAE M2: a label y and a style z).

For each datum ``x_n``, ``k`` draws ``u_i ~ q(u | x_n)`` of the local sites the proposal samples
(the run's guide: e.g. z alone, or y and z as Pyro's M2 guide draws them; without a proposal,
the prior of every local site). The model is conditioned on each draw and its remaining discrete
local sites ``e`` are summed out exactly by tensor contraction::

    w_i = p(x_n, u_i | θ) / q(u_i | x_n)          with  p(x_n, u_i) = Σ_e p(x_n, u_i, e)
    log p̂(x_n) = log (1/k) Σ_i w_i

and the posterior of a discrete local site ``d`` is the self-normalised estimate::

    p̂(d = v | x_n) = Σ_i w_i f_i(v) / Σ_i w_i,
        f_i(v) = p(d = v | x_n, u_i)     d enumerated: Rao-Blackwellised, by per-value contraction
        f_i(v) = 1[d_i = v]              d drawn by the proposal

with the delta-method standard error of a ratio estimate (Owen 2013, eq. 9.8)::

    se(v) = √(Σ_i w̃_i² (f_i(v) − p̂(d = v | x_n))²),     w̃_i = w_i / Σ_j w_j.

Like every importance-sampling error bar it trusts the sample variance of the weights: it is
reliable when the proposal is wider than the posterior and optimistic when few weights dominate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from ..data.base import values
from ..errors import IncompatibleError

if TYPE_CHECKING:
    from .pyro_model import PyroModel

PARTICLES = "_particles"
#: bound on particles × elements of the data per pass
MAX_ELEMENTS = 2**22


@dataclass(frozen=True)
class LocalDraws:
    """``k`` importance draws of the local latents of ``N`` data.

    :ivar log_weights: ``(k, N)`` float64, ``log w_i`` of each datum.
    :ivar given: site -> ``(k, N, K)`` float64, ``f_i(v)`` over the site's K values (see the
        module docstring).
    :ivar supports: site -> ``(K, *event_shape)``, the site's values in the order of ``given``.
    """

    log_weights: torch.Tensor
    given: dict[str, torch.Tensor]
    supports: dict[str, torch.Tensor]

    def log_marginal(self) -> torch.Tensor:
        """``log p̂(x_n)``, ``(N,)`` float64."""
        return self.log_weights.logsumexp(0) - math.log(len(self.log_weights))

    def log_marginal_stderr(self) -> torch.Tensor:
        """Delta-method standard error of :meth:`log_marginal`: ``sd(w) / (√k mean(w))``, ``(N,)``."""
        k = len(self.log_weights)
        w = (self.log_weights - self.log_weights.max(0).values).exp()
        return w.std(0) / (math.sqrt(k) * w.mean(0))

    def marginals(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``p̂(d = v | x_n)`` and its standard error, each site -> ``(N, K)`` float64."""
        w = self.log_weights.softmax(0)[..., None]  # (k, N, 1), normalised over the draws
        probs = {k: (w * f).sum(0) for k, f in self.given.items()}
        stderr = {k: (w.pow(2) * (f - probs[k]).pow(2)).sum(0).sqrt() for k, f in self.given.items()}
        return probs, stderr

    def modes(self) -> dict[str, torch.Tensor]:
        """Each site's most probable value under :meth:`marginals` (per site, not jointly):
        ``(N, *event_shape)``."""
        probs, _ = self.marginals()
        return {k: self.supports[k][p.argmax(-1)] for k, p in probs.items()}


@torch.no_grad()
def local_draws(
    family: PyroModel, model: Callable, x, proposal: Callable | None, k: int, seed: int, marginals: bool = True
) -> LocalDraws:
    """Draw ``k`` importance samples for each datum of ``x`` (``model``: the family with its
    globals conditioned; ``proposal``: a guide called as ``proposal(x)``, its sites outside the
    data plate ignored; None: the prior of every local site). ``marginals``: also compute
    ``f_i`` for every discrete local site (else ``given`` is empty)."""
    plate, nesting = family.plate_name, family.max_plate_nesting

    def local(site) -> bool:
        return any(f.name == plate for f in site["cond_indep_stack"])

    if proposal is None:  # the prior: the model itself, its observations left out
        guide = poutine.block(model, hide_fn=lambda s: s["is_observed"] or not local(s))
    else:
        guide = poutine.block(proposal, hide_fn=lambda s: not local(s))
    latent = set(family.structure.discrete + family.structure.continuous)
    log_w, given, supports = [], {}, {}
    chunk = max(1, min(k, MAX_ELEMENTS // max(1, values(x).numel())))
    with poutine.seed(rng_seed=seed):
        for start in range(0, k, chunk):
            size = min(chunk, k - start)
            with pyro.plate(PARTICLES, size, dim=-1 - nesting):
                q = prune_subsample_sites(poutine.trace(guide).get_trace(x))
            q.compute_log_prob()
            drawn = {n: s for n, s in q.nodes.items() if s["type"] == "sample" and n in latent}
            missing = [n for n in family.structure.continuous if n not in drawn]
            if missing:
                raise IncompatibleError(
                    f"the proposal does not sample the continuous local site(s) {', '.join(missing)}; "
                    "importance sampling needs it to draw every local latent the model does not enumerate"
                )
            log_q = sum(per_datum(s["log_prob"], _frame(s, plate).dim, nesting, size, len(x)) for s in drawn.values())
            conditioned = poutine.condition(model, data={n: s["value"] for n, s in drawn.items()})
            enumerated = [n for n in family.structure.discrete if n not in drawn] if marginals else []
            joint = family._contract(conditioned, x, particles=size)  # log p(x, u_i)
            for name in enumerated:  # p(d = v | x, u_i), each value of d kept
                kept, support = family._contract(conditioned, x, particles=size, keep=name)
                given.setdefault(name, []).append(kept.double().softmax(-1))
                supports[name] = support
            for name, site in drawn.items() if marginals else ():
                if site["fn"].has_enumerate_support and _only_in(site, plate):
                    hit, support = _indicators(site, plate, nesting, size, len(x))
                    given.setdefault(name, []).append(hit)
                    supports[name] = support
            log_w.append((joint - log_q).double())
    return LocalDraws(torch.cat(log_w), {n: torch.cat(f) for n, f in given.items()}, supports)


def per_datum(log_p: torch.Tensor, dim: int, nesting: int, particles: int, rows: int) -> torch.Tensor:
    """A site's ``log_prob`` (particles at dim ``-1 - nesting``, the data plate at ``dim``)
    summed over its other plates: ``(particles, rows)``."""
    log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
    others = [d for d in range(-nesting, 0) if d != dim]
    if others:
        log_p = log_p.sum(others, keepdim=True)
    return log_p.movedim(dim, -1).reshape(log_p.shape[0], log_p.shape[dim]).expand(particles, rows)


def _only_in(site, plate: str) -> bool:
    """The site's plates are the data plate alone (and the particles)."""
    return {f.name for f in site["cond_indep_stack"] if f.vectorized} <= {plate, PARTICLES}


def _frame(site, plate: str):
    return next(f for f in site["cond_indep_stack"] if f.name == plate)


def _indicators(site, plate: str, nesting: int, particles: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``1[d_i = v]`` ``(particles, rows, K)`` of a drawn discrete site, and its K values."""
    fn, value = site["fn"], site["value"]
    support = fn.enumerate_support(expand=False)  # (K, 1.., *event)
    event = len(fn.event_shape)
    flat = support.reshape(len(support), *fn.event_shape)
    batch = value.dim() - event
    hit = value.unsqueeze(0) == flat.reshape(len(flat), *([1] * batch), *fn.event_shape)
    if event:
        hit = hit.reshape(*hit.shape[: hit.dim() - event], -1).all(-1)  # (K, *batch)
    dim = _frame(site, plate).dim
    hit = torch.stack([per_datum(h.double(), dim, nesting, particles, rows) for h in hit], -1)
    return hit, flat
