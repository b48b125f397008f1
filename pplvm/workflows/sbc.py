"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

For s = 1..S: draw θ̃ ~ p(θ) and x̃ ~ p(x | θ̃) from the family's own model, fit the card to
x̃, draw θ_1..θ_L from the fitted guide q(θ | x̃), and record the rank of f(θ̃) among the
f(θ_l), ``#{l : f(θ_l) < f(θ̃)} ∈ {0..L}``. If q is the exact posterior the ranks are
uniform on {0..L} for every scalar f, whatever p(θ) is; a guide that is too narrow gives
U-shaped rank histograms, too wide ∩-shaped, biased ones skewed.

``f`` is the family's :meth:`~pplvm.families.base.IdentifiedSummaries.identified`
statistics where it has them (a mixture's components in a fixed order, PPCA's ``diag(W Wᵀ)``:
θ itself is identified only up to label switching or rotation, so ranks of raw θ would be
non-uniform even under the exact posterior), else the global latents themselves.
Uniformity is tested per scalar with a chi-square test on equal-probability bins of the
ranks and a Kolmogorov–Smirnov test on the randomised PIT ``(rank + U) / (L + 1)``; the
overall p-value is the smallest, Bonferroni-corrected for the number of tests.

SBC calibrates posteriors of global latents: a family (or variant) whose parameters are all
maximum-likelihood point estimates has nothing to calibrate and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from pyro import poutine
from scipy import stats

from .._modes import evaluating
from ..config import card_from_dict, card_to_dict
from ..errors import IncompatibleError, PplvmError
from ..families import FAMILIES
from ..families.base import IdentifiedSummaries, LatentVariableModel
from ..run import Run, _as_card


@dataclass(frozen=True)
class SBCResult:
    """Per simulation, the true statistics and their posterior draws.

    ``truth[name]``: ``(S, m)``; ``draws[name]``: ``(S, L, m)`` (S simulations, L draws)."""

    truth: dict[str, np.ndarray]
    draws: dict[str, np.ndarray]
    family: str
    rows: int
    statistics: str  # "identified" or "globals"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_draws(self) -> int:
        return next(iter(self.draws.values())).shape[1]

    def ranks(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``#{l : f(θ_l) < f(θ̃)}`` per simulation and scalar: each ``(S, m)`` in ``0..L``."""
        return {k: (self.draws[k] < self.truth[k][:, None, :]).sum(1) for k in self._names(names)}

    def miscalibrated(self, *, shift: float = 0.0, scale: float = 1.0) -> "SBCResult":
        """The same simulations with every posterior moved by ``shift`` posterior standard
        deviations and its spread multiplied by ``scale`` (< 1: overconfident) — a guide that
        SBC must reject; used to check that the test has power."""

        def bend(d):
            mean, sd = d.mean(1, keepdims=True), d.std(1, keepdims=True)
            return mean + scale * (d - mean) + shift * sd

        return replace(self, draws={k: bend(v) for k, v in self.draws.items()})

    def uniformity(self, names: Sequence[str] | None = None, bins: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Chi-square and KS tests of uniform ranks for each scalar statistic.

        Returns ``{"tests": [{"statistic", "index", "chi2_p", "ks_p"}], "bins", "p_value"}``
        where ``p_value`` is the Bonferroni-corrected smallest p-value of all the tests."""
        ranks = self.ranks(names)
        L, S = self.num_draws, len(next(iter(ranks.values())))
        bins = bins or default_bins(L, S)
        if (L + 1) % bins:
            raise PplvmError(f"bins = {bins} must divide the {L + 1} possible ranks (num_draws + 1)")
        rng = np.random.default_rng(seed)
        tests = []
        for name, r in ranks.items():
            for j in range(r.shape[1]):
                counts = np.bincount(r[:, j] * bins // (L + 1), minlength=bins)
                pit = (r[:, j] + rng.uniform(size=S)) / (L + 1)
                tests.append(
                    {
                        "statistic": name,
                        "index": j,
                        "chi2_p": float(stats.chisquare(counts).pvalue),
                        "ks_p": float(stats.kstest(pit, "uniform").pvalue),
                    }
                )
        smallest = min(min(t["chi2_p"], t["ks_p"]) for t in tests)
        return {"tests": tests, "bins": bins, "p_value": min(1.0, smallest * 2 * len(tests))}

    def _names(self, names):
        names = list(self.truth) if names is None else list(names)
        unknown = [n for n in names if n not in self.truth]
        if unknown:
            raise PplvmError(f"SBC statistic(s) {unknown}: expected some of {list(self.truth)}")
        return names


def default_bins(num_draws: int, sims: int) -> int:
    """The most equal-probability bins (dividing the ``num_draws + 1`` rank values) that keep
    at least 5 expected simulations per bin — the chi-square approximation's rule of thumb."""
    fits = [b for b in range(2, num_draws + 2) if (num_draws + 1) % b == 0 and sims / b >= 5]
    return max(fits) if fits else 2


def statistics_of(
    model: LatentVariableModel, params: dict[str, torch.Tensor], batch_dims: int
) -> dict[str, torch.Tensor]:
    """The SBC statistics of ``params`` (``batch_dims`` leading draw dims ``S``), each
    ``(*S, m)``: the family's identified ones, else each global site flattened."""
    if isinstance(model, IdentifiedSummaries):
        return model.identified(params)
    return {k: v.reshape(*v.shape[:batch_dims], -1) for k, v in params.items()}


def simulate(model: LatentVariableModel, rows: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One draw ``θ̃ ~ p(θ)``, ``x̃ ~ p(x | θ̃)`` of ``rows`` rows from the model itself."""
    with torch.no_grad(), evaluating(model), poutine.seed(rng_seed=seed):
        trace = poutine.trace(model).get_trace(None, num_data=rows)
    return {k: trace.nodes[k]["value"] for k in model.global_sites}, trace.nodes[model.observed_site]["value"]


def run_sbc(
    card,
    sims: int,
    *,
    rows: int = 100,
    num_draws: int = 99,
    seed: int = 0,
    callback: Callable[[int, int], None] | None = None,
) -> SBCResult:
    """Simulate ``sims`` data sets of ``rows`` rows from the card's model prior, fit the
    card to each (all rows, no standardisation, ``training.seed = seed + s``) and collect
    ``num_draws`` posterior draws of the statistics. ``model.dim`` must be set in the card."""
    card = _as_card(card)
    if sims < 2:
        raise PplvmError(f"--sims: SBC needs at least 2 simulations, got {sims}")
    if rows < 2:
        raise PplvmError(f"--rows: each simulated data set needs at least 2 rows, got {rows}")
    if num_draws < 1:
        raise PplvmError(f"--draws: expected at least one posterior draw, got {num_draws}")
    if card.model.dim is None:
        raise PplvmError(
            "model.dim: SBC simulates its data from the model, so the card must set model.dim (e.g. --set model.dim=2)"
        )
    family = FAMILIES[card.model.family]
    model = family.from_config(card.model, card.model.dim)
    if not model.global_sites:
        raise IncompatibleError(
            f"family {card.model.family!r} as configured has no global latent variables — all its parameters "
            "are maximum-likelihood point estimates — so SBC has no posterior to calibrate"
            + ("; set model.prior = 'normal' for a prior on W" if "prior" in type(card.model).model_fields else "")
        )
    raw = card_to_dict(card)
    truth, draws = {}, {}
    for s in range(sims):
        theta, x = simulate(model, rows, seed + s)
        fit_card = card_from_dict(
            raw,
            {
                "data.valid_fraction": 0.0,
                "data.test_fraction": 0.0,
                "data.standardize": False,
                "training.seed": seed + s,
                "training.progress": False,
            },
        )
        run = Run.from_card(fit_card, data=x.numpy()).fit()
        post = run.draws(num_draws, seed=seed + s)
        spread = max(float(v.std(0).max()) for v in post.values())
        if spread == 0:
            raise IncompatibleError(
                f"guide.kind = {card.guide.kind!r} gives point estimates (no posterior "
                "spread); SBC needs a guide with a posterior, e.g. meanfield"
            )
        for k, v in statistics_of(run.model, post, 1).items():
            draws.setdefault(k, []).append(v.double().numpy())
        for k, v in statistics_of(model, theta, 0).items():
            truth.setdefault(k, []).append(v.double().numpy())
        if callback is not None:
            callback(s + 1, sims)
    kind = "identified" if isinstance(model, IdentifiedSummaries) else "globals"
    return SBCResult(
        {k: np.stack(v) for k, v in truth.items()},
        {k: np.stack(v) for k, v in draws.items()},
        card.model.family,
        rows,
        kind,
        {"seed": seed, "guide": card.guide.kind},
    )


def rank_histogram_plot(
    result: SBCResult, names: Sequence[str] | None = None, bins: int | None = None, max_panels: int = 12
) -> Figure:
    """One rank histogram per scalar statistic (up to ``max_panels``) with the expected count
    and its central 99% binomial band under uniformity."""
    ranks = result.ranks(names)
    L = result.num_draws
    S = len(next(iter(ranks.values())))
    bins = bins or default_bins(L, S)
    panels = [(k, j) for k, r in ranks.items() for j in range(r.shape[1])][:max_panels]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3 * cols, 2.4 * rows), layout="constrained")
    lo, hi = stats.binom.ppf([0.005, 0.995], S, 1 / bins)
    for i, (name, j) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        counts = np.bincount(ranks[name][:, j] * bins // (L + 1), minlength=bins)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(S / bins, color="0.4", lw=1)
        ax.bar(np.arange(bins), counts, width=0.9, color="tab:blue")
        ax.set(title=f"{name}[{j}]", xticks=[], xlabel=f"rank bin (L = {L})")
    fig.suptitle(f"SBC rank histograms: {result.family}, {S} simulations of {result.rows} rows")
    return fig
