"""The model as a graph: sites, plates, observed vs latent and dependencies, read from Pyro's own
model inspection (:func:`pyro.infer.inspect.get_model_relations`, which needs no graphviz) and
drawn with matplotlib (``model.png`` in a run directory, ``pplvm render CARD``).

Layout: each site sits one row below its deepest parent (parameters and root latents on top),
sites in the same plates in one column band; a plate is a rounded box around its sites, labelled with its
name; observed sites are shaded.
"""

from __future__ import annotations

from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from pyro.infer.inspect import get_model_relations


def model_relations(model: Callable, *args, **kwargs) -> dict[str, Any]:
    """:func:`~pyro.infer.inspect.get_model_relations` of ``model(*args, **kwargs)``: sites, their
    parents (``sample_sample``, ``sample_param``), distributions, plates and observed sites."""
    return get_model_relations(model, model_args=args, model_kwargs=kwargs)


def layout(relations: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``name -> (x, y)`` for every site and parameter: ``y = −depth`` (one row below the deepest
    parent); ``x``: a column band per set of plates, so each plate's sites sit together."""
    parents = _parents(relations)
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in depth:
            ups = [p for p in parents.get(name, []) if p not in seen]
            depth[name] = 1 + max((level(p, seen + (name,)) for p in ups), default=-1)
        return depth[name]

    order = list(parents)
    for name in order:
        level(name)
    plates = _plates_of(relations)
    # one column band per set of plates (nested sets side by side), so plate boxes do not overlap
    bands: dict[tuple[str, ...], dict[int, list[str]]] = {}
    for name in order:
        bands.setdefault(plates.get(name, ()), {}).setdefault(depth[name], []).append(name)
    pos, left = {}, 0.0
    for key in sorted(bands):
        rows = bands[key]
        width = max(len(r) for r in rows.values())
        for d, row in rows.items():
            for i, name in enumerate(row):
                pos[name] = (left + i + (width - len(row)) / 2, -float(d))
        left += width + 0.6
    return pos


def model_graph(relations: dict[str, Any], title: str = "") -> Figure:
    """The figure of :func:`model_relations`' output."""
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
