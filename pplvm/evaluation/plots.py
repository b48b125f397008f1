"""Figures pplvm writes into a run directory. Built on ``matplotlib.figure.Figure`` so that no
pyplot backend is touched (safe in notebooks, servers and tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.figure import Figure


def loss_plot(history: Sequence[dict[str, Any]]) -> Figure:
    """Training and held-out loss (negative objective per datum) against epoch."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    valid = [(h["epoch"], h["valid_loss"]) for h in history if "valid_loss" in h]
    if valid:
        ax.plot(*zip(*valid), label="held-out", marker="o", ms=3)
    ax.set(xlabel="epoch", ylabel="loss per datum (−objective)", title="Training")
    ax.legend()
    return fig


def _project(x: torch.Tensor, *others: torch.Tensor):
    """Project to the top two principal axes of ``x`` when ``D > 2``."""
    if x.shape[1] <= 2:
        return (x, *others), ("x0", "x1")
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:2].T
    return tuple((t - mean) @ basis for t in (x, *others)), ("PC 1", "PC 2")


def cluster_plot(x: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, title: str = "") -> Figure:
    """Data coloured by their MAP component, with component means marked."""
    (xp, cp), (lx, ly) = _project(x.detach(), centres.detach())
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if xp.shape[1] == 1:
        xp, cp = torch.cat([xp, torch.zeros_like(xp)], 1), torch.cat([cp, torch.zeros_like(cp)], 1)
    ax.scatter(xp[:, 0], xp[:, 1], c=labels, cmap="tab10", s=8, alpha=0.7)
    ax.scatter(cp[:, 0], cp[:, 1], c="black", marker="x", s=80, label="component means")
    ax.set(xlabel=lx, ylabel=ly, title=title)
    ax.legend(loc="best")
    return fig


def state_plot(x: torch.Tensor, marginals: torch.Tensor, path: torch.Tensor, title: str = "") -> Figure:
    """One sequence ``x`` ``(T, D)`` over time, above its posterior state marginals ``(T, K)``
    (stacked areas) with the Viterbi path ``(T,)`` drawn on top."""
    x, marginals, path = x.detach().cpu(), marginals.detach().cpu(), path.detach().cpu()
    steps = torch.arange(len(x))
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for d in range(min(x.shape[1], 8)):
        top.plot(steps, x[:, d], lw=1, label=f"x{d}")
    top.set(ylabel="observation", title=title)
    if x.shape[1] <= 8:
        top.legend(loc="upper right", fontsize="small")
    bottom.stackplot(steps, marginals.T, alpha=0.6, labels=[f"state {k}" for k in range(marginals.shape[1])])
    k = max(marginals.shape[1], 1)
    bottom.step(steps, (path + 0.5) / k, where="mid", color="black", lw=1.2, label="Viterbi (scaled)")
    bottom.set(xlabel="step", ylabel="p(state | x)", ylim=(0, 1))
    bottom.legend(loc="upper right", fontsize="small", ncols=2)
    return fig


def posterior_plot(idata, var_names: Sequence[str]) -> Figure:
    """Forest plot of the posterior of the global latents (arviz)."""
    from .arviz import arviz

    fig = Figure(figsize=(6, 1.0 + 0.35 * _count(idata, var_names)), layout="constrained")
    ax = fig.add_subplot()
    arviz().plot_forest(idata, var_names=list(var_names), combined=True, ax=ax)
    return fig


def _count(idata, var_names) -> int:
    return int(sum(idata.posterior[v].isel(chain=0, draw=0).size for v in var_names))


def save_figure(fig: Figure, path: Path) -> None:
    from ..training.checkpoint import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(Path(path), buf.getvalue())
