"""The model as a graph: sites, plates, observed vs latent and dependencies, read from Pyro's own
model inspection (:func:`pyro.infer.inspect.get_model_relations`, which needs no graphviz) and
drawn with matplotlib (``model.png`` in a run directory, ``pplvm render CARD``).

Layout: each site sits one row below its deepest parent (parameters and root latents on top),
sites in the same plates in one column band; a plate is a rounded box around its sites, labelled with its
name; observed sites are shaded. Sites repeated per time step (``z_1 … z_T``, ``x_1 … x_T``:
:func:`~pplvm.evaluation.sites.time_steps`) are drawn as a chain: each stem one row, its steps
left to right, so ``z_t → z_{t+1}`` runs along the row and ``z_t → x_t`` straight down.
"""

from __future__ import annotations

from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from pyro.infer.inspect import get_model_relations

from .sites import step, time_steps


def model_relations(model: Callable, *args, **kwargs) -> dict[str, Any]:
    """:func:`~pyro.infer.inspect.get_model_relations` of ``model(*args, **kwargs)``: sites, their
    parents (``sample_sample``, ``sample_param``), distributions, plates and observed sites."""
    return get_model_relations(model, model_args=args, model_kwargs=kwargs)


def layout(relations: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``name -> (x, y)`` for every site and parameter: ``y = −depth`` (one row below the deepest
    parent); ``x``: a column band per set of plates, so each plate's sites sit together. A
    time-step chain (:func:`~pplvm.evaluation.sites.time_steps`) is one node of the depth
    graph, its steps side by side in step order (step ``t`` of every chain in one column)."""
    parents = _parents(relations)
    chains = time_steps(parents)
    stem = {name: key for key, names in chains.items() for name in names}
    node = {name: stem.get(name, name) for name in parents}
    ups: dict[str, set[str]] = {}  # the depth graph: a chain's parents are its steps' (less itself)
    for name, ps in parents.items():
        ups.setdefault(node[name], set()).update(node[p] for p in ps if node[p] != node[name])
    members = {n: chains.get(n, [n]) for n in ups}
    depth: dict[str, int] = {}

    def level(n: str, seen: tuple[str, ...] = ()) -> int:
        if n not in depth:
            above = [p for p in sorted(ups[n]) if p not in seen]
            depth[n] = 1 + max((level(p, seen + (n,)) for p in above), default=-1)
        return depth[n]

    order = list(dict.fromkeys(node[name] for name in parents))
    for n in order:
        level(n)
    plates = _plates_of(relations)
    # one column band per set of plates (nested sets side by side), so plate boxes do not overlap
    bands: dict[tuple[str, ...], dict[int, list[str]]] = {}
    for n in order:
        bands.setdefault(plates.get(members[n][0], ()), {}).setdefault(depth[n], []).append(n)
    # a chain's steps one column each, and one more where steps were left out (see model_graph)
    cols = {n: [0.0] if n not in chains else _columns(members[n]) for n in members}
    pos, left = {}, 0.0
    for key in sorted(bands):
        rows = bands[key]
        width = max(sum(cols[n][-1] + 1 for n in row) for row in rows.values())
        for d, row in rows.items():
            x = left + (width - sum(cols[n][-1] + 1 for n in row)) / 2
            for n in row:
                for name, col in zip(members[n], cols[n]):
                    pos[name] = (x + col, -float(d))
                x += cols[n][-1] + 1
        left += width + 0.6
    return pos


def _columns(names: list[str]) -> list[float]:
    """Column of each step of a chain: consecutive, with one empty column where steps are missing."""
    out = [0.0]
    for a, b in zip(names, names[1:]):
        out.append(out[-1] + (1 if step(b) == step(a) + 1 else 2))
    return out


def elided(relations: dict[str, Any], first: int = 4, last: int = 2) -> tuple[dict[str, Any], list[str]]:
    """``relations`` without the middle steps of chains longer than ``first + last + 1`` steps
    (a figure a person can read; :func:`layout` leaves a column for each gap), and the names of
    the steps each gap follows."""
    drop, gaps = set(), []
    for names in time_steps(relations["sample_dist"]).values():
        if len(names) > first + last + 1:
            drop.update(names[first:-last])
            gaps.append(names[first - 1])
    if not drop:
        return relations, gaps

    def keep(names):
        return [n for n in names if n not in drop]

    out = dict(relations)
    for key in ("sample_sample", "sample_param", "sample_dist"):
        out[key] = {k: (v if key == "sample_dist" else keep(v)) for k, v in relations[key].items() if k not in drop}
    out["plate_sample"] = {p: keep(v) for p, v in relations["plate_sample"].items()}
    out["observed"] = keep(relations["observed"])
    return out, gaps


def model_graph(relations: dict[str, Any], title: str = "") -> Figure:
    """The figure of :func:`model_relations`' output (long time-step chains: their first and
    last steps, ``⋯`` between)."""
    relations, gaps = elided(relations)
    pos = layout(relations)
    parents = _parents(relations)
    observed = set(relations["observed"])
    params = {p for ps in relations["sample_param"].values() for p in ps}
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    w, h = max(xs) - min(xs) + 2.2, max(ys) - min(ys) + 2.2
    fig = Figure(figsize=(max(3.5, 1.6 * w), max(3.0, 1.5 * h)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    radius = 0.3
    members = {p: set(sites) for p, sites in relations["plate_sample"].items() if sites}
    for plate, sites in sorted(members.items(), key=lambda kv: -len(kv[1])):
        inner = sum(1 for other, s in members.items() if other != plate and s < sites)
        pad = radius + 0.22 + 0.18 * inner
        px = [pos[s][0] for s in sites if s in pos]
        py = [pos[s][1] for s in sites if s in pos]
        x0, y0 = min(px) - pad, min(py) - pad - 0.15
        ax.add_patch(
            FancyBboxPatch(
                (x0, y0),
                max(px) - min(px) + 2 * pad,
                max(py) - min(py) + 2 * pad + 0.15,
                boxstyle="round,pad=0.02,rounding_size=0.1",
                fill=False,
                lw=1,
                ec="0.35",
            )
        )
        ax.text(max(px) + pad - 0.05, y0 + 0.05, plate, ha="right", va="bottom", fontsize=8, color="0.25")
    for child, ups in parents.items():
        for parent in ups:
            ax.add_patch(
                FancyArrowPatch(
                    pos[parent],
                    pos[child],
                    arrowstyle="-|>",
                    mutation_scale=10,
                    shrinkA=_shrink(parent in params),
                    shrinkB=_shrink(child in params),
                    color="0.2",
                    lw=0.9,
                )
            )
    for name, (x, y) in pos.items():
        if name in params:
            ax.text(
                x,
                y,
                name,
                ha="center",
                va="center",
                fontsize=8,
                family="monospace",
                bbox={"boxstyle": "square,pad=0.25", "fc": "white", "ec": "0.5", "lw": 0.8},
            )
            continue
        ax.add_patch(Circle((x, y), radius, fc="0.8" if name in observed else "white", ec="black", lw=1.1))
        ax.text(x, y, name, ha="center", va="center", fontsize=8)
        ax.text(
            x,
            y - radius - 0.08,
            relations["sample_dist"].get(name, ""),
            ha="center",
            va="top",
            fontsize=6.5,
            color="0.35",
        )
    for name in gaps:  # the steps left out of a long chain
        ax.text(pos[name][0] + 1, pos[name][1], "⋯", ha="center", va="center", fontsize=14)
    ax.set_xlim(min(xs) - 1.1, max(xs) + 1.1)
    ax.set_ylim(min(ys) - 1.1, max(ys) + 0.8)
    ax.set_title(title or "model", fontsize=10)
    return fig


def _shrink(is_param: bool) -> float:
    """Points to stop an arrow short of a node's centre (circles of radius 0.3 drawn at
    ~1.5 inches per unit: ~32 points)."""
    return 16.0 if is_param else 32.0


def _parents(relations: dict[str, Any]) -> dict[str, list[str]]:
    """Every node (sites, then parameters) with its parents: sample and parameter ones."""
    out: dict[str, list[str]] = {}
    for site in relations["sample_dist"]:
        out[site] = list(relations["sample_sample"].get(site, [])) + list(relations["sample_param"].get(site, []))
    for ps in relations["sample_param"].values():
        for p in ps:
            out.setdefault(p, [])
    return out


def _plates_of(relations: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for plate, sites in relations["plate_sample"].items():
        for s in sites:
            out.setdefault(s, []).append(plate)
    return {k: tuple(sorted(v)) for k, v in out.items()}
