"""Log-densities through an ODE: the instantaneous change of variables (Chen et al. 2018),
as the probability-flow ODE of a diffusion model uses it (Song et al. 2021).

For a flow ``dz/dt = f(z, t)`` carrying a density ``p_t``, ``d log p_t(z(t)) / dt = -∇·f(z(t), t)``;
integrating from ``t0`` (the datum) to ``t1`` (where the density ``p_{t1}`` is known)::

    log p_{t0}(z(t0)) = log p_{t1}(z(t1)) + ∫_{t0}^{t1} ∇·f(z(t), t) dt

The divergence is exact (``D`` vector–Jacobian products, for small ``D``) or Hutchinson's
estimate ``vᵀ (∂f/∂z) v`` with one probe ``v`` per datum held fixed along the path (Rademacher
or Gaussian, ``E[v vᵀ] = I``; Grathwohl et al. 2019), which keeps the integral, and so the
log-density, unbiased. The solver is Dormand–Prince RK45 (:func:`dopri5`) with an adaptive step
shared by the batch.

Shapes: ``z`` ``(B, D)``; ``t`` a float; ``f(z, t)`` ``(B, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

Divergence = Literal["rademacher", "gaussian", "exact"]

# Dormand & Prince (1980), the 5(4) pair with the 5th-order solution propagated (FSAL)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(a - b for a, b in zip(_B5, _B4))


@dataclass(frozen=True)
class SolveStats:
    """What one solve cost: evaluations of ``f`` and accepted / rejected steps."""

    nfe: int
    accepted: int
    rejected: int


def dopri5(
    f: Callable[[torch.Tensor, float], torch.Tensor],
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 100_000,
) -> tuple[torch.Tensor, SolveStats]:
    """``y(t1)`` for ``dy/dt = f(y, t)``, ``y(t0) = y0`` ``(B, n)``, by adaptive Dormand–Prince
    RK45. A step is accepted when the error estimate's RMS over each row, relative to
    ``atol + rtol · max(|y|, |y_new|)``, is at most 1 for every row (so the batch shares one step
    size and each row meets the tolerance); the step then changes by ``0.9 · err^(-1/5)``,
    clipped to [0.2, 10]."""
    if not t1 > t0:
        raise ValueError(f"dopri5: expected t1 > t0, got {t0} .. {t1}")
    span = t1 - t0

    def norm(v: torch.Tensor, scale: torch.Tensor) -> float:
        return float((v / scale).pow(2).mean(-1).sqrt().max())

    k1 = f(y0, t0)
    scale0 = atol + rtol * y0.abs()
    d0, d1 = norm(y0, scale0), norm(k1, scale0)
    h = min(span, 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6 * span)
    t, y, nfe, accepted, rejected = t0, y0, 1, 0, 0
    while t < t1:
        if accepted + rejected >= max_steps:
            raise RuntimeError(f"dopri5: {max_steps} steps did not reach t1 = {t1} (at t = {t}); loosen rtol/atol")
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            yi = y + h * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(yi, t + _C[i] * h))
        nfe += 6
        y_new = yi  # the 7th stage sits at the 5th-order solution
        err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        ratio = norm(err, atol + rtol * torch.maximum(y.abs(), y_new.abs()))
        if ratio <= 1.0:
            t, y, k1 = (t1 if t1 - (t + h) < 1e-12 * span else t + h), y_new, ks[6]
            accepted += 1
        else:
            rejected += 1
        h *= min(10.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
    return y, SolveStats(nfe, accepted, rejected)


def divergence(
    f: Callable[[torch.Tensor, float], torch.Tensor], z: torch.Tensor, t: float, probe: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(z, t)`` ``(B, D)`` and its divergence per row ``(B,)``: Hutchinson's ``vᵀ (∂f/∂z) v``
    for the probes ``probe`` ``(B, D)``, or exact (``probe`` None: one vector–Jacobian product
    per dimension). Gradients flow to ``z`` only; both are returned detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = f(z, t)
        if probe is not None:
            (vjp,) = torch.autograd.grad(out, z, probe)
            return out.detach(), (vjp * probe).sum(-1)
        div = torch.zeros(len(z), dtype=z.dtype, device=z.device)
        for i in range(z.shape[-1]):
            (g,) = torch.autograd.grad(out[:, i].sum(), z, retain_graph=i + 1 < z.shape[-1])
            div = div + g[:, i]
        return out.detach(), div


def probes(shape: torch.Size, kind: Divergence, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """Hutchinson probes ``(B, D)`` with ``E[v vᵀ] = I``: ±1 (``rademacher``) or N(0, 1)
    (``gaussian``); None for the exact divergence."""
    if kind == "exact":
        return None
    v = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return v.sign() if kind == "rademacher" else v


def flow_log_density(
    drift: Callable[[torch.Tensor, float], torch.Tensor],
    z0: torch.Tensor,
    t0: float,
    t1: float,
    end_log_prob: Callable[[torch.Tensor], torch.Tensor],
    *,
    divergence_kind: Divergence = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, SolveStats]:
    """``log p_{t0}(z0)`` per row ``(B,)`` for ``z0`` ``(B, D)`` under the flow ``dz/dt = drift(z,
    t)`` whose density at ``t1`` is ``end_log_prob`` (``(B, D) -> (B,)``): the ODE for ``z`` and
    the accumulated divergence solved together by :func:`dopri5` (the tolerance covers both)."""
    d = z0.shape[-1]
    g = generator if generator is not None else torch.Generator(device=z0.device).manual_seed(0)
    v = probes(z0.shape, divergence_kind, z0, g)

    def augmented(state: torch.Tensor, t: float) -> torch.Tensor:
        out, div = divergence(drift, state[:, :d], t, v)
        return torch.cat([out, div[:, None]], -1)

    start = torch.cat([z0, z0.new_zeros(len(z0), 1)], -1)
    end, stats = dopri5(augmented, start, t0, t1, rtol=rtol, atol=atol)
    return end_log_prob(end[:, :d]) + end[:, d], stats


__all__ = ["Divergence", "SolveStats", "divergence", "dopri5", "flow_log_density", "probes"]
