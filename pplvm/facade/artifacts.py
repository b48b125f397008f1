"""What a run writes and shows: the run directory's inference data, plots and summary, the
summary as text or plain data, the model's graph, and samples saved to a file.

Each function taking ``run`` is one of :class:`~pplvm.run.Run`'s methods; what draws from the
model (the export, plots, the graph) runs with its networks in ``.eval()``.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import rundir
from .._modes import evaluated
from .._progress import reporting
from ..data import values
from ..errors import PplvmError
from ..evaluation import graph, plots
from ..evaluation.arviz import arviz, point_table, small_sites
from ..families import LatentVariableModel

if TYPE_CHECKING:
    from ..run import Run

#: how each likelihood kind is named wherever a log-likelihood is shown
LIKELIHOOD_WORDS = {"exact": "exact", "estimate": "importance-sampled estimate", "bound": "lower bound", "none": "none"}


@evaluated
def write_artifacts(run: Run) -> None:
    """Write inference data (unless ``evaluation.export = false``), plots and the text summary
    into the run directory."""
    d, export = run.run_dir, run.card.evaluation.export
    with reporting(run.card.training.progress):
        # without the export, the summary and posterior plot need the globals' draws alone
        idata = run.idata = run.to_arviz(posterior_predictive=export, log_likelihood=export)
    if export:
        run.write_inference_data(idata)
    with rundir.storage(f"run directory {str(d)!r}"):
        plots.save_figure(plots.loss_plot(run.history), d / "loss.png")
        plots.save_figure(run.model_graph(), d / "model.png")
        if run.model.global_sites:
            plots.save_figure(plots.posterior_plot(idata, run.model.global_sites), d / "posterior.png")
        for name, fig in run._host_model().plots(run._training_data(), run.params()).items():
            plots.save_figure(fig, d / f"{name}.png")
        rundir.write_atomic(d / "summary.txt", run.summary_text(idata))


@evaluated
def write_inference_data(run: Run, idata=None) -> Path:
    """Write ``inference_data.nc`` into the run directory and return its path: ``idata``, or
    :meth:`~pplvm.Run.to_arviz` of the training data — the file a fit writes, which
    ``pplvm export RUN`` writes later for a run fitted with ``evaluation.export = false``."""
    d = run.run_dir
    if idata is None:
        idata = run.to_arviz()
    # the netCDF library can crash (not raise) on a full disk: check the space first
    rundir.check_writable(d, 2 * _nbytes(idata))
    path = d / "inference_data.nc"
    with rundir.storage(f"run directory {str(d)!r}"):
        rundir.write_atomic(path, lambda tmp: idata.to_netcdf(str(tmp)), f"{str(path)!r}")
    return path


def _host_model(run: Run) -> LatentVariableModel:
    """The model with its parameters on the host (plots draw from host tensors)."""
    return run.model if run.device.type == "cpu" else copy.deepcopy(run.model).to("cpu")


def _posterior_table(run: Run, idata, max_size: int | None):
    """``(table, hidden)``: the arviz summary (a DataFrame, None when no site is small
    enough) of the global sites with at most ``max_size`` entries, and the others' names."""
    shown = small_sites(idata, run.model.global_sites, max_size)
    hidden = [v for v in run.model.global_sites if v not in shown]
    if not shown:  # every site may be larger than max_size (e.g. a Bayesian W): nothing to tabulate
        return None, hidden
    if run.traits.point_estimate:  # one draw (see Run.to_arviz): its value is all there is to show
        return point_table(idata, shown), hidden
    with warnings.catch_warnings():  # r_hat of constant entries (LKJ zeros) is 0/0
        warnings.simplefilter("ignore", RuntimeWarning)
        table = arviz().summary(idata, var_names=shown, kind="all", round_to=4)
    return table[table["sd"] > 0], hidden


def _summary_idata(run: Run, idata):
    if idata is None:  # after fit(out=...), reuse what write_artifacts built; else the globals' draws
        idata = run.idata if run.idata is not None else run.to_arviz(posterior_predictive=False, log_likelihood=False)
    return idata


def summary(run: Run, idata=None, max_size: int | None = None) -> dict[str, Any]:
    """The summary as plain data (what ``pplvm summary --json`` prints): the run, its last
    epoch, the best held-out log-likelihood and, per global-latent entry, arviz's summary
    statistics (``posterior``: ``{"locs[0, 1]": {"mean": ..., "sd": ..., ...}}``; NaN as null)."""
    c, last = run.card, (run.history[-1] if run.history else {})
    out: dict[str, Any] = {
        "run": c.name,
        "family": c.model.family,
        "guide": c.guide.kind,
        "objective": c.objective.name,
        "likelihood": run.model.likelihood,
        "epochs": last.get("epoch", 0),
        "train_loss": last.get("train_loss"),
        "valid_log_likelihood": None,
        "valid_epoch": None,
        "posterior": {},
        "not_shown": [],
    }
    scored = [h for h in run.history if "valid_log_likelihood" in h]
    if scored:
        best = max(scored, key=lambda h: h["valid_log_likelihood"])
        out.update(valid_log_likelihood=best["valid_log_likelihood"], valid_epoch=best["epoch"])
    if run.model.global_sites:
        table, out["not_shown"] = run._posterior_table(run._summary_idata(idata), max_size)
        if table is not None:
            out["posterior"] = {
                str(name): {str(k): (None if v != v else float(v)) for k, v in row.items()}
                for name, row in table.iterrows()
            }
    return out


def globals_label(run: Run) -> str:
    """What the fitted globals are: guide draws, or a point estimate (and by what)."""
    return run.objective.globals_label()


#: rows the model runs on for its graph: the structure, not the values, is drawn
GRAPH_ROWS = 8


@evaluated
def model_graph(run: Run):
    """The model drawn as a graph — sites, plates, observed vs latent, dependencies — from
    Pyro's model inspection on a few training rows: a matplotlib Figure."""
    x = run._training_data()[:GRAPH_ROWS]
    relations = graph.model_relations(run.model.graph_prototype(), x)
    return graph.model_graph(relations, title=f"{run.card.name}: model.family = {run.card.model.family!r}")


def summary_text(run: Run, idata=None, max_size: int | None = None) -> str:
    """Header, held-out metrics and the arviz summary of the global latents; with
    ``max_size``, sites with more entries than that are named but not tabulated."""
    c = run.card
    if run.model.global_sites:
        table, hidden = run._posterior_table(run._summary_idata(idata), max_size)
        posterior = [f"{run.globals_label()}:"]
        if table is not None:
            posterior.append(table.to_string())
        if hidden:
            posterior.append(f"(not shown: {', '.join(hidden)}; summary.txt in the run directory has them)")
    else:
        posterior = ["no global latents: every parameter (weights, W, noise) is a point estimate"]
    last = run.history[-1] if run.history else {}
    done = f"{last['epoch'] - 1} and {last['step']} steps in all" if last.get("partial") else last.get("epoch", 0)
    lines = [
        f"run: {c.name} — family {c.model.family}, guide {c.guide.kind}, objective {c.objective.name}",
        f"epochs: {done}, final train loss per datum: {last.get('train_loss', float('nan')):.6g}",
    ]
    if last.get("stopped"):
        lines.append(f"stopped: {last['stopped']}")
    if run.weights == "ema":
        lines.append(f"weights: the moving average (training.ema = {c.training.ema:g})")
    if "valid_log_likelihood" in last:
        best = max((h for h in run.history if "valid_log_likelihood" in h), key=lambda h: h["valid_log_likelihood"])
        lines.append(
            f"held-out log-likelihood per datum: {best['valid_log_likelihood']:.6g} "
            f"(epoch {best['epoch']}, {LIKELIHOOD_WORDS[run.model.likelihood]})"
        )
    lines += ["", *posterior]
    return "\n".join(lines) + "\n"


def _nbytes(idata) -> int:
    """Bytes of the arrays in an InferenceData (arviz 0.x) or DataTree (arviz 1.x)."""
    try:
        if hasattr(idata, "subtree"):  # DataTree
            return int(sum(node.dataset.nbytes for node in idata.subtree))
        return int(sum(idata[g].nbytes for g in idata.groups()))
    except (AttributeError, KeyError, TypeError):
        return 0


def save_samples(x: torch.Tensor, path: str | Path) -> None:
    """Write samples as ``.npy`` or ``.csv`` (by suffix), atomically."""
    path = Path(path)
    arr = values(x).detach().cpu().numpy()
    buf = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buf, arr)
    elif path.suffix == ".csv":
        if arr.ndim != 2:
            raise PplvmError(f"--out {str(path)!r}: samples of shape {arr.shape} do not fit a CSV table; use .npy")
        np.savetxt(buf, arr, delimiter=",")
    else:
        raise PplvmError(f"--out {str(path)!r}: expected a .npy or .csv file name")
    rundir.write_atomic(path, buf.getvalue(), f"--out {str(path)!r}")
