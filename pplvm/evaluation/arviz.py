"""Export a fitted model to arviz, built on ``az.from_dict`` (present in arviz 0.x and 1.x).

Posterior draws come from the guide q(θ); they are independent, so splitting them into
``chains`` chains gives diagnostics (r_hat ≈ 1, ess ≈ draws) that arviz can compute.

pplvm runs on arviz 0.23 (``InferenceData``, Python 3.11) and arviz 1.x (xarray
``DataTree``, Python 3.12+). Where the two differ this module is the one place that knows:
:func:`groups`, :func:`read_inference_data`, :func:`compare_table`. pplvm draws its own
figures with matplotlib (:mod:`pplvm.evaluation.plots`) rather than through arviz's
plotting API, which changed completely in 1.x.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..errors import PplvmError


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


def point_table(idata, names, round_to: int = 4):
    """The ``mean`` column of ``az.summary`` for an export of one draw (a point estimate), with
    arviz's row labels (``locs[0, 1]``): its statistics over draws (sd, ess, r_hat) need several."""
    import pandas as pd

    rows: dict[str, float] = {}
    for v in names:
        value = np.asarray(idata.posterior[v].values, dtype=np.float64).mean((0, 1))
        for index in np.ndindex(value.shape):
            rows[f"{v}[{', '.join(map(str, index))}]" if index else v] = round(float(value[index]), round_to)
    return pd.DataFrame({"mean": list(rows.values())}, index=list(rows))


def arviz_major() -> int:
    """The installed arviz's major version (0 or 1)."""
    return int(arviz().__version__.split(".")[0])


def groups(idata) -> set[str]:
    """Names of the groups of an ``InferenceData`` (arviz 0.x) or ``DataTree`` (1.x)."""
    if callable(getattr(idata, "groups", None)):
        return set(idata.groups())
    return set(idata.children)


def read_inference_data(path) -> Any:
    """Read an ``inference_data.nc`` written by :meth:`pplvm.Run.to_arviz` with this Python's arviz."""
    return arviz().from_netcdf(str(path))


#: the columns of :func:`compare_table` (arviz 0.23's names)
COMPARE_COLUMNS = ("rank", "elpd_loo", "se", "elpd_diff", "dse", "p_loo", "weight", "warning")


def compare_table(idatas: dict[str, Any], method: str = "stacking"):
    """``az.compare`` by PSIS-LOO on the log scale, best first, as a DataFrame indexed by name
    with :data:`COMPARE_COLUMNS` whatever the arviz version: ``elpd_diff`` >= 0 is how far
    below the best a run is, ``warning`` whether any Pareto k of its LOO is too high."""
    az = arviz()
    loos = {name: az.loo(idata) for name, idata in idatas.items()}
    if arviz_major() >= 1:
        table = az.compare(loos, method=method, round_to="none")
        table = table.rename(columns={"elpd": "elpd_loo", "p": "p_loo"})
        table["elpd_diff"] = -table["elpd_diff"]  # 1.x: elpd - best (<= 0); 0.x: best - elpd
        table["warning"] = [bool(loos[name].warning) for name in table.index]
    else:
        table = az.compare(loos, ic="loo", method=method, scale="log")
    return table[list(COMPARE_COLUMNS)]


def loo_refusal(idata) -> str | None:
    """Why PSIS-LOO cannot score a run's ``InferenceData`` (one line, after "the run"), or None.

    LOO reweights posterior draws of the global latents to leave each datum out. A model with no
    global latents has no draws: every parameter is a point estimate θ̂, its log predictive
    density of a datum is just log p(x_n | θ̂), and summed over the data that fitted θ̂ that is an
    in-sample score, not a leave-one-out one (p_loo would be 0). Held-out data score it fairly."""
    if "log_likelihood" not in groups(idata):
        return (
            "has no log-likelihood (an implicit density, e.g. a GAN), so LOO cannot score it; compare samples "
            "with pplvm two-sample instead"
        )
    if "posterior" not in groups(idata) or not list(idata.posterior.data_vars):
        return (
            "has no global latents (its parameters are point estimates θ̂), so PSIS-LOO has no posterior draws "
            "to reweight: its log predictive density is just log p(x_n | θ̂), in-sample on the training data; "
            "compare held-out log-likelihoods instead (pplvm evaluate RUN --split test)"
        )
    ll = np.asarray(idata.log_likelihood["obs"])
    if np.ptp(ll.reshape(-1, ll.shape[-1]), axis=0).max() == 0:
        return (
            "has no posterior spread (its parameters are point estimates: maximum likelihood or a MAP guide), "
            "so leave-one-out has nothing to reweight; fit a Bayesian variant (e.g. ppca/fa with "
            "model.prior = 'normal') or a meanfield/lowrank guide"
        )
    return None


def loo_estimates(idata) -> dict[str, float | bool]:
    """PSIS-LOO of one run (``az.loo``): ``elpd_loo``, its ``se``, ``p_loo`` and ``warning``
    (a Pareto k too high), under the same names whatever the arviz version; a PplvmError with
    :func:`loo_refusal`'s reason where LOO cannot score the run."""
    why = loo_refusal(idata)
    if why is not None:
        raise PplvmError(f"the run {why}")
    loo = arviz().loo(idata)
    if arviz_major() >= 1:
        return {"elpd_loo": float(loo.elpd), "se": float(loo.se), "p_loo": float(loo.p), "warning": bool(loo.warning)}
    return {
        "elpd_loo": float(loo.elpd_loo),
        "se": float(loo.se),
        "p_loo": float(loo.p_loo),
        "warning": bool(loo.warning),
    }
