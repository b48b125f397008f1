"""Figures pplvm writes into a run directory. Built on ``matplotlib.figure.Figure`` so that no
pyplot backend is touched (safe in notebooks, servers and tests)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..rundir import write_atomic


def loss_plot(history: Sequence[dict[str, Any]]) -> Figure:
    """Training and held-out loss (negative objective per datum) against epoch and, where
    logged, the held-out log-likelihood per datum."""
    has_ll = any("valid_log_likelihood" in h for h in history)
    fig = Figure(figsize=(10 if has_ll else 6, 3.5), layout="constrained")
    axes = fig.subplots(1, 2 if has_ll else 1, squeeze=False)[0]
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    valid = [(h["epoch"], h["valid_loss"]) for h in history if "valid_loss" in h]
    if valid:
        axes[0].plot(*zip(*valid), label="held-out", marker="o", ms=2)
    axes[0].set(xlabel="epoch", ylabel="−objective per datum", title="Loss")
    axes[0].legend()
    if has_ll:
        ll = [(h["epoch"], h["valid_log_likelihood"]) for h in history if "valid_log_likelihood" in h]
        axes[1].plot(*zip(*ll), color="C2", marker="o", ms=2)
        axes[1].set(xlabel="epoch", ylabel="log p(x) per datum", title="Held-out log-likelihood")
    return fig


def project_2d(x: torch.Tensor, *others: torch.Tensor):
    """Project to the top two principal axes of ``x`` when ``D > 2``."""
    if x.shape[1] <= 2:
        return (x, *others), ("x0", "x1")
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:2].T
    return tuple((t - mean) @ basis for t in (x, *others)), ("PC 1", "PC 2")


def cluster_plot(x: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, title: str = "") -> Figure:
    """Data coloured by their MAP component, with component means marked."""
    (xp, cp), (lx, ly) = project_2d(x.detach(), centres.detach())
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


def posterior_plot(idata, var_names: Sequence[str], max_size: int = 32) -> Figure:
    """Forest plot of the posterior of the global latents: per scalar entry, the median with
    the central 50% (thick) and 94% (thin) intervals of the draws (chains pooled). Sites with
    more than ``max_size`` entries (e.g. correlation factors) are left to the summary table;
    when every site is that large, the first one is drawn."""
    from .arviz import small_sites

    var_names = small_sites(idata, var_names, max_size) or list(var_names[:1])
    labels, draws = [], []
    for v in var_names:
        da = idata.posterior[v]
        values = np.asarray(da.values, dtype=np.float64)  # (chain, draw, *shape)
        values = values.reshape(values.shape[0] * values.shape[1], -1)  # (S, m)
        shape = da.shape[2:]
        for j in range(values.shape[1]):
            index = np.unravel_index(j, shape) if shape else ()
            labels.append(f"{v}[{', '.join(map(str, index))}]" if shape else v)
            draws.append(values[:, j])
    q = np.quantile(np.stack(draws, 1), [0.03, 0.25, 0.5, 0.75, 0.97], axis=0)  # (5, m)
    y = np.arange(len(labels))[::-1]
    fig = Figure(figsize=(6, 1.0 + 0.3 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    ax.hlines(y, q[0], q[4], color="C0", lw=1)
    ax.hlines(y, q[1], q[3], color="C0", lw=3)
    ax.plot(q[2], y, "o", color="C0", ms=4, mfc="white")
    ax.set_yticks(y, labels)
    one = len(draws[0]) == 1  # a point estimate's export: one draw, no intervals
    title = "point estimate of the global latents" if one else "posterior: median, 50% and 94% intervals"
    ax.set(ylim=(-0.7, len(labels) - 0.3), title=title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def compare_plot(table, n: int) -> Figure:
    """PSIS-LOO comparison: ``elpd_loo`` ± se per run (open circles) and, below each run after
    the best, its difference to the best ± dse (grey). ``table``: rows best first with the
    columns of :func:`pplvm.evaluation.arviz.compare_table`."""
    names = [str(i) for i in table.index]
    elpd, se = table["elpd_loo"].to_numpy(float), table["se"].to_numpy(float)
    diff, dse = table["elpd_diff"].to_numpy(float), table["dse"].to_numpy(float)
    fig = Figure(figsize=(6.5, 1.2 + 0.5 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    y = -np.arange(len(names), dtype=float)
    ax.errorbar(elpd, y, xerr=se, fmt="o", mfc="white", color="black", capsize=3, label="elpd_loo ± se")
    later = np.arange(len(names)) > 0
    if later.any():
        ax.errorbar(
            (elpd[0] - diff)[later],
            y[later] - 0.3,
            xerr=dse[later],
            fmt="^",
            color="grey",
            capsize=3,
            label="difference to the best ± dse",
        )
    ax.axvline(elpd[0], color="grey", ls="--", lw=0.8)
    ax.set_yticks(y, names)
    ax.set(xlabel="elpd_loo (log)", title=f"PSIS-LOO on {n} observations (higher is better)")
    ax.legend(loc="best", fontsize="small")
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically (:func:`pplvm.rundir.write_atomic`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(path, buf.getvalue())


def image_grid(
    images: torch.Tensor, image_shape: Sequence[int], title: str = "", row_labels: Sequence[str] | None = None
) -> Figure:
    """Images as a grid: ``images`` ``(N, D)`` (laid out ⌈√N⌉ wide) or ``(R, C, D)`` (R rows of
    C), each row of ``D`` values an image of ``image_shape``: ``(H, W)`` or ``(1, H, W)`` grey
    (values in [0, 1], dark = 1), ``(3, H, W)`` colour (channel-first RGB in [0, 1])."""
    images = images.detach().cpu()
    if images.dim() == 2:
        cols = max(1, int(len(images) ** 0.5 + 0.999))
        rows = -(-len(images) // cols)
        pad = torch.full((rows * cols - len(images), images.shape[-1]), float("nan"))
        images = torch.cat([images, pad]).reshape(rows, cols, -1)
    rows, cols = images.shape[:2]
    c, h, w = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
    if c not in (1, 3):
        raise ValueError(f"image_shape {tuple(image_shape)}: expected (H, W), (1, H, W) or (3, H, W)")
    tiles = images.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    colour = {"cmap": "gray_r", "vmin": 0, "vmax": 1} if c == 1 else {}
    tiles = tiles[..., 0] if c == 1 else tiles.nan_to_num(1.0).clamp(0, 1)  # (an empty tile: white)
    fig = Figure(figsize=(max(2.0, 0.45 * cols + 0.6), max(2.0, 0.45 * rows + 0.5)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tiles.numpy(), interpolation="nearest", **colour)
    ax.set_xticks([])
    ax.set_yticks([h * (i + 0.5) for i in range(rows)] if row_labels is not None else [])
    if row_labels is not None:
        ax.set_yticklabels(list(row_labels))
    for i in range(1, rows):
        ax.axhline(i * h - 0.5, color="white", lw=1)
    for j in range(1, cols):
        ax.axvline(j * w - 0.5, color="white", lw=1)
    ax.set_title(title)
    return fig


def likelihood_terms_plot(terms: dict[str, float], dim: int, title: str = "") -> Figure:
    """An additive decomposition of ``-log p(x)`` (nats per datum, in order, e.g. a diffusion
    bound's L_0 .. L_T) in bits per dimension, one point per term, on a log scale."""
    import math

    names, vals = list(terms), [v / (dim * math.log(2)) for v in terms.values()]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(vals)), [max(v, 1e-12) for v in vals], marker="o" if len(vals) <= 50 else None, ms=3)
    ax.set_yscale("log")
    step = max(1, len(names) // 8)
    ticks = sorted(set(range(0, len(names), step)) | {len(names) - 1})
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=30)
    ax.set(ylabel="bits / dim", title=title or f"terms of -log p(x): total {sum(vals):.4g} bits/dim")
    return fig


def term_rows(terms: dict[str, float], dim: int, max_rows: int = 12) -> list[tuple[str, float, float]]:
    """``(name, nats, bits/dim)`` rows of an ordered decomposition; with more than ``max_rows``
    terms the first and last stay single and the rest are summed in ``max_rows - 2`` runs."""
    import math

    items = list(terms.items())
    if len(items) > max_rows:
        middle = items[1:-1]
        size = math.ceil(len(middle) / (max_rows - 2))
        runs = [middle[i : i + size] for i in range(0, len(middle), size)]
        items = [
            items[0],
            *((r[0][0] if len(r) == 1 else f"{r[0][0]}..{r[-1][0]}", sum(v for _, v in r)) for r in runs),
            items[-1],
        ]
    return [(name, v, v / (dim * math.log(2))) for name, v in items]


def samples_scatter(data: torch.Tensor, samples: torch.Tensor, title: str = "") -> Figure:
    """2-D data ``(N, 2)`` and model samples ``(M, 2)`` side by side on shared axes."""
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, name, colour in ((axes[0], data, "data", "C0"), (axes[1], samples, "samples", "C1")):
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color=colour)
        ax.set(title=f"{name} ({len(pts)})", xlabel="x0", ylabel="x1")
    if title:
        fig.suptitle(title)
    return fig
