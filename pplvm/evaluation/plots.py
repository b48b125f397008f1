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


def latent_scatter_plot(z: torch.Tensor, labels: torch.Tensor | None = None, title: str = "") -> Figure:
    """Posterior means of a continuous latent ``(N, L)``: the first two coordinates (a strip
    for L = 1), coloured by ``labels`` if given."""
    z = z.detach()
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    y = z[:, 1] if z.shape[1] > 1 else torch.zeros(len(z))
    colour = {"c": labels, "cmap": "tab10"} if labels is not None else {"c": "tab:blue"}
    ax.scatter(z[:, 0], y, s=8, alpha=0.7, **colour)
    ax.set(xlabel="z 1", ylabel="z 2" if z.shape[1] > 1 else "", title=title)
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
