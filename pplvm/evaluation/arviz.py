"""Export a fitted model to arviz, built on ``az.from_dict`` (present in arviz 0.x and 1.x).

Posterior draws come from the guide q(θ); they are independent, so splitting them into
``chains`` chains gives diagnostics (r_hat ≈ 1, ess ≈ draws) that arviz can compute.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def arviz():
    """Import arviz without its import-time FutureWarning about the 1.x refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def inference_data(
    draws: dict[str, torch.Tensor],
    log_likelihood: torch.Tensor | None,
    observed: torch.Tensor,
    posterior_predictive: torch.Tensor | None,
    *,
    chains: int,
    dims: dict[str, list[str]] | None = None,
):
    """Build ``InferenceData`` with posterior, posterior_predictive, observed_data and
    log_likelihood groups.

    :param draws: site -> ``(S, *site_shape)`` with ``S`` divisible by ``chains``.
    :param log_likelihood: ``(S, N)`` per-datum log-likelihood of ``observed`` per draw, or None
        (no log_likelihood group: a family without a likelihood).
    :param observed: ``(N, D)`` data; ``posterior_predictive``: ``(S, N, D)`` or None.
    """
    az = arviz()

    def chained(t: torch.Tensor) -> np.ndarray:
        t = t.detach().cpu()
        return t.reshape(chains, t.shape[0] // chains, *t.shape[1:]).numpy()

    # Only the leading dim is named: log_likelihood["obs"] is (chain, draw, N) while the
    # observations are (N, D), and arviz names the trailing feature dim itself.
    all_dims: dict[str, list[str]] = {"obs": ["obs_id"], **(dims or {})}
    groups: dict[str, Any] = {
        "posterior": {k: chained(v) for k, v in draws.items()},
        "observed_data": {"obs": observed.detach().cpu().numpy()},
    }
    if log_likelihood is not None:  # None for a family with an implicit density
        groups["log_likelihood"] = {"obs": chained(log_likelihood)}
    if posterior_predictive is not None:
        groups["posterior_predictive"] = {"obs": chained(posterior_predictive)}
    if int(az.__version__.split(".")[0]) >= 1:  # arviz 1.x: one dict of groups, returns a DataTree
        return az.from_dict(groups, dims=all_dims)
    return az.from_dict(**groups, dims=all_dims)


def small_sites(idata, names, max_size: int | None) -> list[str]:
    """The sites among ``names`` with at most ``max_size`` entries per draw (all if None), for
    tables and plots a person reads; e.g. a (K, D, D) correlation factor is left out."""
    if max_size is None:
        return list(names)
    return [v for v in names if idata.posterior[v].isel(chain=0, draw=0).size <= max_size]
