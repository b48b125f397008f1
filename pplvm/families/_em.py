"""Closed-form M-step pieces shared by the families with :class:`~.base.ClosedFormEM`.

Conventions: ``counts`` are expected counts (sums of responsibilities / state marginals);
``estimate`` is ``"map"`` (mode under the prior) or ``"ml"``; where a component or row has
no data (zero expected count) and the maximiser is undefined, the old value is kept (any
value maximises the objective there)."""

from __future__ import annotations

import torch


def dirichlet_mode(
    counts: torch.Tensor, concentration: torch.Tensor | float, estimate: str, old: torch.Tensor
) -> torch.Tensor:
    """Maximiser over the simplex (last dim) of ``Σ_k counts_k log p_k + log Dirichlet(p | α)``:
    ``(counts + α - 1)_+`` normalised (``"ml"``: α = 1). With α < 1 the mode is on the
    boundary; the zero entries are floored at the dtype's tiny (a log of them stays finite)."""
    mass = (counts + concentration - 1.0).clamp_min(0.0) if estimate == "map" else counts
    total = mass.sum(-1, keepdim=True)
    tiny = torch.finfo(mass.dtype).tiny
    new = torch.where(total > 0, mass / total.clamp_min(tiny), old)
    new = new.clamp_min(tiny)
    return new / new.sum(-1, keepdim=True)


def gaussian_diag_step(
    count: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    old_loc: torch.Tensor,
    old_scale: torch.Tensor,
    estimate: str,
    *,
    loc_mean: float,
    loc_scale: float,
    scale_log_mean: float,
    scale_log_sd: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension normal emissions ``N(μ_kd, σ_kd²)`` with priors ``μ ~ Normal(m, s)`` and
    ``σ ~ LogNormal(a, b)``, from ``count`` ``(*R, K)``, ``first`` = Σ r x ``(*R, K, D)`` and
    ``second`` = Σ r x² ``(*R, K, D)`` (``R``: restarts, each its own).

    ``"ml"``: μ = first / count, σ² = second / count − μ². ``"map"``: conditional maximisation
    (ECM, Meng & Rubin 1993) — μ given the old σ (a precision-weighted mean with the prior),
    then σ given the new μ, each the exact maximiser, so the log posterior never decreases.
    The σ step solves, in s = log σ, ``S e^{-2s} − (n + 1) − (s − a)/b² = 0`` (S = Σ r (x − μ)²;
    the +1 is the LogNormal density's 1/σ), a convex decreasing function of s, by Newton's
    method: from the ML start it steps at most ``|s_ML − a|`` left of the root and then climbs
    monotonically to it."""
    n = count.unsqueeze(-1)
    has = n > 1e-10 * n.sum(-2, keepdim=True).clamp_min(1)  # (per restart, where they lead)
    safe_n = n.clamp_min(torch.finfo(n.dtype).tiny)
    if estimate == "ml":
        loc = torch.where(has, first / safe_n, old_loc)
        var = second / safe_n - loc.pow(2)
        var = var.clamp_min(torch.finfo(var.dtype).eps * second.div(safe_n).clamp_min(1.0))
        return loc, torch.where(has, var.sqrt(), old_scale)
    prec = 1.0 / old_scale.pow(2)
    prior_prec = 1.0 / loc_scale**2
    loc = (first * prec + loc_mean * prior_prec) / (n * prec + prior_prec)
    spread = (second - 2 * loc * first + n * loc.pow(2)).clamp_min(0.0).double()  # Σ r (x − μ)²
    nd, a, b2 = n.double().expand_as(spread), scale_log_mean, scale_log_sd**2
    s = 0.5 * (spread.clamp_min(1e-300) / (nd + 1)).log()
    for _ in range(60):
        e = spread * torch.exp(-2 * s)
        g = e - (nd + 1) - (s - a) / b2
        s = s - g / (-2 * e - 1 / b2)
    return loc, s.exp().to(old_scale.dtype)
