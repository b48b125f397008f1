"""Importance-sampled log-likelihood with the guide as proposal.

For each datum ``x_n`` and ``k`` draws ``z_i ~ q(z | x_n)`` from the guide,

    log p̂(x_n) = log (1/k) Σ_i w_i,      w_i = p(x_n, z_i) / q(z_i | x_n),

computed in log space. ``E[p̂] = p(x_n)``, and ``E[log p̂]`` is the IWAE-k bound, which rises to
``log p(x_n)`` as k grows (Burda et al. 2016). The standard error is the delta method on the
weights: ``se(log p̂) ≈ sd(w) / (√k · mean(w))`` with the unbiased variance, i.e.
``√((r − 1)/(k − 1))`` with ``r = k Σw² / (Σw)²``; the effective sample size is ``k / r``.
The delta method trusts the sample variance of the weights, so it is reliable when the guide
is wider than the posterior (bounded weights) and optimistic when the weights are heavy-tailed
(watch ``ess``).

Memory: the data go in chunks of rows and the k draws in chunks of particles (a vectorised
particle plate), so that ``particles × rows × (elements per datum)``, the size of the largest
tensor of a decoder model, stays within ``max_elements`` and within the allocator's reusable
block size (:mod:`pplvm._allocator`). Chunks combine exactly: the per-datum
running ``logsumexp`` of ``log w`` and of ``2 log w`` (float64) are all the estimate needs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .._allocator import reusing_memory, tensor_rows
from .._progress import progress
from ..data.base import Batch
from ..errors import CardError, DataError, IncompatibleError

DEFAULT_MAX_ELEMENTS = 2**23  # 8M elements: 32 MiB per float32 tensor of that size


@dataclass(frozen=True)
class ImportanceEstimate:
    """Per-datum results, each ``(N,)`` float64.

    :ivar log_likelihood: ``log p̂(x_n)`` in nats.
    :ivar stderr: delta-method standard error of ``log p̂(x_n)`` (NaN when k = 1).
    :ivar ess: effective sample size ``(Σw)² / Σw²`` of the k weights, in ``[1, k]``.
    :ivar bits_per_dim: ``−log p̂(x_n) / (D log 2)`` with D the elements of one datum (no
        dequantisation offset: add it yourself for discretised data).
    :ivar k: draws per datum.
    """

    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    bits_per_dim: torch.Tensor
    k: int

    def summary(self) -> dict[str, float]:
        """Means over the data, and the standard error of the mean log-likelihood (the data's
        draws are independent: ``√Σ se² / N``)."""
        n = len(self.log_likelihood)
        return {
            "log_likelihood": float(self.log_likelihood.mean()),
            "log_likelihood_stderr": float(self.stderr.pow(2).sum().sqrt() / n),
            "bits_per_dim": float(self.bits_per_dim.mean()),
            "min_ess": float(self.ess.min()),
            "k": self.k,
        }


@torch.no_grad()
def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    data: "torch.Tensor | Batch",
    *,
    k: int = 1000,
    batch_size: int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    seed: int | None = None,
    plate: str = "data",
    max_plate_nesting: int | None = None,
) -> ImportanceEstimate:
    """Estimate ``log p(x_n)`` for every datum of ``data`` by importance sampling from ``guide``.

    :param model: a Pyro model called as ``model(x)``, its latent sites and observations inside
        the plate named ``plate``. Global latents must be conditioned first (e.g.
        ``family.conditioned(params)``); observed sites outside the plate are then left out,
        so the estimate is of ``log p(x_n | θ)``.
    :param guide: called as ``guide(x)``; proposes every latent site of the model, inside the
        same plate (e.g. :class:`~pplvm.guides.amortized.AmortizedNormal` without globals).
    :param data: ``(N, ...)`` tensor, or a :class:`~pplvm.data.Batch`; rows are data.
    :param k: importance draws per datum (>= 1).
    :param batch_size: at most this many rows per pass (default: as many as fit).
    :param max_elements: bound on ``particles × rows × elements per datum`` per pass.
    :param seed: seed of the draws (``None``: the current global RNG state).
    :param plate: name of the model's data plate.
    :param max_plate_nesting: plate nesting of model and guide; defaults to the model's own
        ``max_plate_nesting`` where it declares one (every :class:`~pplvm.families.LatentVariableModel`
        does), else is read off one traced pass.
    """
    k = _positive_int(k, "k")
    max_elements = _positive_int(max_elements, "max_elements")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")
    n = len(data)
    if n == 0:
        raise DataError("data: is empty (0 rows); expected at least one datum")
    x = data.x if isinstance(data, Batch) else data
    per_datum = x[0].numel()
    if per_datum > max_elements:
        raise CardError(
            f"max_elements = {max_elements}: one draw for one datum already needs {per_datum} elements; raise it"
        )
    # within max_elements, and each tensor below the allocator's ceiling (taking the widest
    # activation as 4 x a datum's elements, as evaluation_cost does)
    max_elements = min(max_elements, max(per_datum, tensor_rows(4 * per_datum) * per_datum))
    rows = min(n, batch_size or n, max_elements // per_datum)
    particles = min(k, max_elements // (rows * per_datum))

    with poutine.seed(rng_seed=seed) if seed is not None else nullcontext():
        if max_plate_nesting is None:
            declared = getattr(model, "max_plate_nesting", None)  # every pplvm family declares it
            max_plate_nesting = declared if isinstance(declared, int) else _plate_nesting(model, guide, data[:1])
        s1, s2 = [], []
        with reusing_memory(), progress(n * k, "importance sampling", unit="draw") as bar:
            for start in range(0, n, rows):
                a, b = _chunk(model, guide, data[start : start + rows], k, particles, plate, max_plate_nesting, bar)
                s1.append(a)
                s2.append(b)
    log_sum_w, log_sum_w2 = torch.cat(s1), torch.cat(s2)
    log_likelihood = log_sum_w - math.log(k)
    log_r = log_sum_w2 - 2 * log_sum_w + math.log(k)  # r = k Σw² / (Σw)² ∈ [1, k]
    stderr = (log_r.exp() - 1).clamp_min(0).div(k - 1).sqrt() if k > 1 else torch.full_like(log_r, math.nan)
    return ImportanceEstimate(
        log_likelihood=log_likelihood,
        stderr=stderr,
        ess=(math.log(k) - log_r).exp(),
        bits_per_dim=-log_likelihood / (per_datum * math.log(2)),
        k=k,
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CardError(f"{name} = {value!r}: expected an integer >= 1")
    return value


def _plate_nesting(model, guide, x) -> int:
    """Deepest plate dim over one (unvectorised) pass of guide and model, as Pyro guesses it."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    dims = [
        f.dim
        for t in (guide_trace, model_trace)
        for site in t.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return -min(dims) if dims else 0


def _chunk(model, guide, x, k: int, particles: int, plate: str, nesting: int, bar):
    """Running ``logsumexp`` over all k draws of ``log w`` and ``2 log w`` for the rows of ``x``."""
    log_sum_w = log_sum_w2 = None
    done = 0
    while done < k:
        size = min(particles, k - done)
        # Pyro's validation (if on) checks the first pass over these rows; later passes only
        # redraw z with the same shapes, so they skip it (~5% of the time of a pass).
        with (
            pyro.validation_enabled(False) if done else nullcontext(),
            pyro.plate("_importance_particles", size, dim=-(nesting + 1)),
        ):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        log_w = _log_weights(model_trace, guide_trace, plate, nesting).double()  # (size, rows)
        a, b = log_w.logsumexp(0), (2 * log_w).logsumexp(0)
        log_sum_w = a if log_sum_w is None else torch.logaddexp(log_sum_w, a)
        log_sum_w2 = b if log_sum_w2 is None else torch.logaddexp(log_sum_w2, b)
        done += size
        bar.update(size * len(x))
    return log_sum_w, log_sum_w2


def _log_weights(model_trace, guide_trace, plate: str, nesting: int) -> torch.Tensor:
    """``log p(x_n, z_i) − log q(z_i | x_n)``, ``(particles, rows)``."""
    model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    total = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (sign < 0 and site["is_observed"]) or site["infer"].get("is_auxiliary"):
                continue  # pyro.factor terms (auxiliary losses) are no part of p(x, z)
            if sign > 0 and not site["is_observed"] and name not in guide_trace.nodes:
                raise IncompatibleError(
                    f"model latent {name!r} is not proposed by the guide; importance sampling "
                    "needs the guide to sample every latent of the model (enumerated ones too)"
                )
            frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
            if frame is None and site["is_observed"]:
                continue  # a global fixed by poutine.condition: conditioning, not data
            if frame is None:
                raise IncompatibleError(
                    f"{'model' if sign > 0 else 'guide'} site {name!r} is outside the {plate!r} plate; "
                    "the estimate is per datum, so condition global latents first "
                    "(e.g. family.conditioned(params)) and leave them out of the guide"
                )
            log_p = site["log_prob"]
            log_p = log_p.reshape((1,) * (nesting + 1 - log_p.dim()) + log_p.shape)
            others = [d for d in range(-nesting, 0) if d != frame.dim]
            if others:
                log_p = log_p.sum(others, keepdim=True)
            log_p = log_p.movedim(frame.dim, -1)
            total = total + sign * log_p.reshape(log_p.shape[0], log_p.shape[-1])
    return total


__all__ = ["DEFAULT_MAX_ELEMENTS", "ImportanceEstimate", "importance_log_likelihood"]
