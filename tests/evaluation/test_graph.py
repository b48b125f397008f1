"""The model graph (``model.png``, ``pplvm render``): Pyro's relations of a known model, laid
out parents above children with plates apart, drawn with a node per site and a box per plate."""

from __future__ import annotations

import torch
from matplotlib.patches import Circle, FancyBboxPatch

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
