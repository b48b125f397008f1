"""Model comparison of fitted runs by PSIS leave-one-out cross-validation (arviz).

Each run directory holds ``inference_data.nc`` (written by :meth:`pplvm.Run.fit` through
:meth:`pplvm.Run.to_arviz`) whose ``log_likelihood`` group is ``log p(x_n | θ_s)`` per datum n
and posterior draw s, in the data's own units (a standardising transform's Jacobian
included), so runs of any family — and with or without standardisation — are comparable.
``az.compare`` ranks them by the expected log pointwise predictive density ``elpd_loo``.

LOO needs (1) the same observations in every run, checked here row by row, and (2) a
posterior: draws of the global latents that differ. Runs whose parameters are point
estimates (maximum likelihood, MAP) have no posterior to leave a datum out of; they are
refused with an error rather than ranked on their in-sample fit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from .._progress import progress
from ..errors import PplvmError, RunDirError
from ..evaluation.arviz import COMPARE_COLUMNS as COLUMNS
from ..evaluation.arviz import compare_table, loo_refusal, read_inference_data


@dataclass
class Comparison:
    """The ranked table (best first) and what it was computed on."""

    table: Any  # pandas DataFrame from az.compare, indexed by run name
    n: int  # observations every run was scored on
    warnings: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run, best first, with the :data:`COLUMNS` and ``run``."""
        out = []
        for name, row in self.table.iterrows():
            rec = {"run": str(name)}
            for col in COLUMNS:
                v = row[col]
                rec[col] = bool(v) if col == "warning" else (int(v) if col == "rank" else float(v))
            out.append(rec)
        return out

    def text(self) -> str:
        head = (
            f"{'rank':>4}  {'run':<30} {'elpd_loo':>11} {'se':>8} {'elpd_diff':>10} {'dse':>8} {'p_loo':>8} "
            f"{'weight':>7}"
        )
        lines = [f"PSIS-LOO comparison on the same {self.n} observations (higher elpd_loo is better)", head]
        for r in self.rows():
            flag = "  (pareto k > 0.7)" if r["warning"] else ""
            lines.append(
                f"{r['rank']:>4}  {r['run']:<30} {r['elpd_loo']:>11.2f} {r['se']:>8.2f} {r['elpd_diff']:>10.2f} "
                f"{r['dse']:>8.2f} {r['p_loo']:>8.2f} {r['weight']:>7.3f}{flag}"
            )
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def load_inference_data(run_dir: str | Path):
    """The ``InferenceData`` a fitted run wrote; RunDirError if there is none."""
    path = Path(run_dir) / "inference_data.nc"
    if not path.is_file() and (Path(run_dir) / "checkpoint.pt").is_file():  # fitted with evaluation.export = false
        raise RunDirError(f"{str(run_dir)!r} has no inference_data.nc; write it with: pplvm export {run_dir}")
    if not path.is_file():
        raise RunDirError(f"{str(run_dir)!r} has no inference_data.nc; is it a finished pplvm run directory?")
    return read_inference_data(path)


def check_same_data(idatas: dict[str, Any], *, rtol: float = 1e-5) -> int:
    """Raise PplvmError unless every run's ``observed_data`` holds the same rows in the same
    order (to ``rtol``: values pass through float32 and a standardising transform); return N."""
    names = list(idatas)
    ref_name, ref = names[0], np.asarray(idatas[names[0]].observed_data["obs"])
    atol = rtol * max(float(np.abs(ref).max()), 1.0)
    for name in names[1:]:
        obs = np.asarray(idatas[name].observed_data["obs"])
        if obs.shape != ref.shape:
            raise PplvmError(
                f"runs were scored on different data: {ref_name!r} has observations of shape {ref.shape}, "
                f"{name!r} has {obs.shape}; LOO compares runs datum by datum, so they must share the same "
                "data (same data card: source, split fractions and split_seed)"
            )
        bad = ~np.isclose(obs, ref, rtol=rtol, atol=atol).all(axis=-1)
        if bad.any():
            raise PplvmError(
                f"runs were scored on different data: {ref_name!r} and {name!r} differ in {int(bad.sum())} of "
                f"{len(ref)} rows (first: row {int(np.argmax(bad))}); LOO compares runs datum by datum, so they "
                "must share the same data (same data card: source, split fractions and split_seed)"
            )
    return len(ref)


def _check_posterior(name: str, idata) -> None:
    why = loo_refusal(idata)
    if why is not None:
        raise PplvmError(f"run {name!r} {why}")


def compare_runs(
    run_dirs: Sequence[str | Path], *, names: Sequence[str] | None = None, method: str = "stacking"
) -> Comparison:
    """Rank fitted runs by PSIS-LOO ``elpd`` (best first); raise PplvmError if they were not
    scored on the same data or have no posterior draws."""
    if len(run_dirs) < 2:
        raise PplvmError(f"compare needs at least two runs, got {len(run_dirs)}")
    names = [str(d) for d in run_dirs] if names is None else list(names)
    if len(set(names)) != len(names):
        raise PplvmError(f"compare: run names must be distinct, got {names}")
    idatas = {}
    with progress(len(names), "load runs", unit="run") as bar:
        for name, d in zip(names, run_dirs):
            idatas[name] = load_inference_data(d)
            bar.update(1)
    n = check_same_data(idatas)
    for name, idata in idatas.items():
        _check_posterior(name, idata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = compare_table(idatas, method)
    notes = sorted({str(w.message).split("\n")[0] for w in caught if issubclass(w.category, UserWarning)})
    return Comparison(table, n, notes)


def comparison_plot(comparison: Comparison) -> Figure:
    """elpd_loo ± se per run and its difference to the best (matplotlib, any arviz version)."""
    from ..evaluation.plots import compare_plot

    return compare_plot(comparison.table, comparison.n)
