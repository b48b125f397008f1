"""The model graph (``model.png``, ``pplvm render``): Pyro's relations of a known model, laid
out parents above children with plates apart, drawn with a node per site and a box per plate."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from pplvm.cli import main
from pplvm.evaluation.graph import layout, model_graph, model_relations
from pplvm.families import GaussianMixture, GMMConfig


def gmm_relations():
    return model_relations(GaussianMixture(GMMConfig(components=2, covariance="full"), 2), torch.randn(6, 2))


def test_relations_of_the_mixture_are_its_generative_model():
    """w → z_n; (μ, σ, L, z_n) → x_n; μ, σ, L in the components plate; z_n, x_n in the data plate."""
    rel = gmm_relations()
    assert rel["observed"] == ["obs"]
    assert rel["sample_sample"]["assignment"] == ["weights"]
    assert set(rel["sample_sample"]["obs"]) == {"locs", "scales", "corr_chol", "assignment"}
    assert set(rel["plate_sample"]["components"]) == {"locs", "scales", "corr_chol"}
    assert set(rel["plate_sample"]["data"]) == {"assignment", "obs"}


def test_layout_puts_parents_above_and_plates_apart():
    rel = gmm_relations()
    pos = layout(rel)
    for child, parents in rel["sample_sample"].items():
        for parent in parents:
            assert pos[parent][1] > pos[child][1], (parent, child)
    comp = [pos[s][0] for s in rel["plate_sample"]["components"]]
    data = [pos[s][0] for s in rel["plate_sample"]["data"]]
    assert max(comp) < min(data) or max(data) < min(comp)  # the two plates' columns do not interleave


def test_figure_has_a_node_per_site_and_a_box_per_plate():
    rel = gmm_relations()
    ax = model_graph(rel, "gmm").axes[0]
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(circles) == len(rel["sample_dist"])
    assert len([p for p in ax.patches if isinstance(p, FancyBboxPatch)]) == len(rel["plate_sample"])
    shaded = [c for c in circles if c.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    assert len(shaded) == 1  # the one observed site


def test_render_command(tmp_path, capsys):
    card = tmp_path / "card.toml"
    card.write_text('[model]\nfamily = "gmm"\ncomponents = 2\n[objective]\nname = "enum"\n[data]\nsource = "iris"\n')
    out = tmp_path / "model.png"
    assert main(["render", str(card), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert main(["render", str(card), "--set", "model.components=0"]) == 2
    assert "model.components" in capsys.readouterr().err


def _chain_model(steps: int):
    """A state-space model written with one site per time step, as Pyro's DMM and HMM examples
    are: ``w`` global, ``z_t ~ N(w z_{t-1}, 1)``, ``x_t ~ N(z_t, 1)`` observed."""

    def chain(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("sequences", len(x)):
            z = torch.zeros(len(x))
            for t in range(1, steps + 1):
                z = pyro.sample(f"z_{t}", dist.Normal(w * z, 1.0))
                pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[:, t - 1])

    return chain


def _arrows(fig) -> set[tuple[tuple[float, float], tuple[float, float]]]:
    return {
        (tuple(a._posA_posB[0]), tuple(a._posA_posB[1])) for a in fig.axes[0].patches if isinstance(a, FancyArrowPatch)
    }


def test_time_steps_are_drawn_as_a_chain():
    """z_1..z_6 on one row and x_1..x_6 on the row below, step t in one column: every edge of
    the chain (z_t -> z_{t+1} along the row, z_t -> x_t straight down) is an arrow of the figure
    (they once all sat in one column, each arrow hiding the last)."""
    relations = model_relations(_chain_model(6), torch.randn(3, 6))
    edges = {(p, c) for c, ps in relations["sample_sample"].items() for p in ps}
    chain = {(f"z_{t}", f"z_{t + 1}") for t in range(1, 6)} | {(f"z_{t}", f"x_{t}") for t in range(1, 7)}
    assert chain <= edges and edges - chain == {("w", f"z_{t}") for t in range(1, 7)}
    pos = layout(relations)
    z, x = [pos[f"z_{t}"] for t in range(1, 7)], [pos[f"x_{t}"] for t in range(1, 7)]
    assert len({y for _, y in z}) == 1 and len({y for _, y in x}) == 1 and x[0][1] < z[0][1] < pos["w"][1]
    assert [a for a, _ in z] == [a for a, _ in x] and all(b - a == pytest.approx(1) for (a, _), (b, _) in zip(z, z[1:]))
    assert _arrows(model_graph(relations)) == {(pos[p], pos[c]) for p, c in edges}


def test_a_long_chain_shows_its_first_and_last_steps():
    """Twenty steps: z_1..z_4, a gap marked ⋯, z_19, z_20 (and their x's), the figure as wide as
    for seven steps; the arrows are the kept steps' edges."""
    fig = model_graph(model_relations(_chain_model(20), torch.randn(3, 20)))
    drawn = {t.get_text() for t in fig.axes[0].texts}
    kept = [1, 2, 3, 4, 19, 20]
    assert {f"z_{t}" for t in kept} | {f"x_{t}" for t in kept} <= drawn and "z_5" not in drawn and "⋯" in drawn
    assert len(_arrows(fig)) == 6 + 3 + 1 + 6  # w -> z_t; z_t -> z_{t+1} within each side (3, 1); z_t -> x_t
    assert fig.get_figwidth() == model_graph(model_relations(_chain_model(7), torch.randn(3, 7))).get_figwidth()
