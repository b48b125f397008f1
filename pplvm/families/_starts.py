"""Data-driven starts of the clustering families (GMM, HMM): k-means, k-means++ seeding or
random rows as centres, and what ``model.init = "auto"`` picks.

``training.restarts`` keeps the best of N fits from the seeds' starts, so a start is worth
restarting only as far as the seed moves it. One k-means run (k-means++ seeding, then Lloyd
iterations) ends in nearly the same partition from most seeds on data with one clear
clustering, and every restart then climbs the same hill; k-means++ seeding alone (scikit-learn's
``init_params = "k-means++"``) is informed (centres spread by D² sampling) yet varies with the
seed. So ``"auto"`` is ``"kmeans"`` for one fit and ``"kmeans++"`` for restarts. Measured on the
hourly-electricity frames of ``bench/hmm_restarts_vs_hmmlearn.py`` (5-state HMM, seeds 0, 10, 20
as the first restart): 10 restarts from k-means reached training log-likelihood −21926, −21926,
−21707; from k-means++ seeds −21718, −21707, −21705; from random rows −21705 ×3.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from .base import FamilyConfig


class ClusterStartConfig(FamilyConfig):
    """A family started from a clustering of the data (``model.init``)."""

    init: Literal["auto", "kmeans", "kmeans++", "random"] = Field(
        "auto",
        description="the start: 'kmeans' (one k-means++ seeded k-means run), 'kmeans++' (k-means++ seeding "
        "alone), 'random' (random rows as centres); 'auto': kmeans, or kmeans++ under training.restarts > 1 "
        "(each restart's seed then moves its start)",
    )

    def for_restarts(self, restarts: int) -> "ClusterStartConfig":
        if self.init != "auto":
            return self
        return self.model_copy(update={"init": "kmeans++" if restarts > 1 else "kmeans"})


def cluster_start(x: torch.Tensor, k: int, generator: torch.Generator, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(k, D)`` and each row's nearest centre ``(N,)`` by ``model.init`` (``"auto"`` unresolved: k-means)."""
    if init == "random":
        centres = x[torch.randperm(len(x), generator=generator)[torch.arange(k) % len(x)]]
        return centres, torch.cdist(x, centres).argmin(-1)
    return kmeans(x, k, generator, iters=0 if init == "kmeans++" else 100)


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, *, restarts: int = 1, iters: int = 100, max_rows: int = 20000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with 2 + log k local trials as
    scikit-learn does) plus Lloyd iterations, best of ``restarts`` by inertia. One run by
    default, as scikit-learn starts each of a mixture's ``n_init`` initialisations: a fit's
    seed then picks its start, and ``training.restarts`` explores from several (a best of
    several k-means runs inside each start would send every restart from nearly the same one).

    Returns centres ``(k, D)`` and the labels ``(N,)`` of every row of ``x``."""
    sub = x if len(x) <= max_rows else x[torch.randperm(len(x), generator=generator)[:max_rows]]
    trials = 2 + int(math.log(k))
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = sub[torch.randint(len(sub), (1,), generator=generator)]
        d2 = torch.cdist(sub, centres).squeeze(-1).pow(2)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
            candidates = sub[torch.multinomial(p, trials, replacement=True, generator=generator)]
            cand_d2 = torch.minimum(d2.unsqueeze(0), torch.cdist(candidates, sub).pow(2))  # (trials, N)
            pick = cand_d2.sum(-1).argmin()
            centres, d2 = torch.cat([centres, candidates[pick : pick + 1]]), cand_d2[pick]
        for _ in range(iters):
            labels = torch.cdist(sub, centres).argmin(-1)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centres).index_add_(0, labels, sub)
            new = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None], centres)
            shift = (new - centres).pow(2).sum()
            centres = new
            if shift <= 1e-8 * sub.var(0).sum():
                break
        inertia = float(torch.cdist(sub, centres).min(-1).values.pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best, torch.cdist(x, best).argmin(-1)
