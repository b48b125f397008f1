"""Guides as plugins: what they declare, Pyro's autoguides by name over the globals, refusals."""

from __future__ import annotations

import math

import pytest
from pyro.infer.autoguide import AutoIAFNormal

import pplvm
from pplvm.errors import IncompatibleError
from pplvm.guides import AUTOGUIDES, GUIDES, GuideTraits, admitted, guide_config, guide_for

PPCA_BAYES = ["training.epochs=2", "training.progress=false", "training.compile=off", "evaluation.draws=2"]


def test_autoiafnormal_guides_the_globals_of_the_bayesian_ppca():
    card = pplvm.load_card(
        "models/ppca_bayes_wine.toml",
        [
            *PPCA_BAYES,
            "guide.kind=amortized",
            "guide.globals=AutoIAFNormal",
            "guide.globals_options={num_transforms=2}",
        ],
    )
    run = pplvm.fit(card)
    assert isinstance(run.guide_plugin.globals_guide(run.guide), AutoIAFNormal)
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert run.draws(4)["weight"].shape[0] == 4


@pytest.mark.parametrize("name", sorted(AUTOGUIDES))
def test_every_autoguide_by_name_guides_the_globals_of_a_mixture(name):
    card = {
        "model": {"family": "gmm", "components": 2},
        "guide": {"kind": name},
        "objective": {"name": "enum"},
        "data": {"source": "iris"},
        "training": {"epochs": 1, "progress": False, "compile": "off"},
    }
    run = pplvm.fit(card)
    assert math.isfinite(run.history[-1]["train_loss"])


def test_traits_declare_what_the_facade_asks():
    ppca = pplvm.Run.from_card({"model": {"family": "ppca", "latent_dim": 2}, "data": {"source": "wine"}}).model
    want = GuideTraits(proposal=True, per_datum=True, held_out_steps=100)  # a q(z_n) fitted to held-out rows
    assert guide_for(guide_config("meanfield")).traits(ppca) == want
    assert guide_for(guide_config("amortized")).traits(ppca).proposal
    assert guide_for(guide_config("map")).traits(ppca).point_estimate
    assert not guide_for(guide_config("forward")).traits(ppca).factorised
    assert admitted(ppca) == ["amortized", "exact", "meanfield", "map", "flow"]
    assert "AutoIAFNormal" in GUIDES


def test_refusals_name_the_capability_and_why():
    card = {
        "model": {"family": "diffusion", "steps": 20, "hidden": [8]},
        "objective": {"name": "diffusion"},
        "data": {"source": "moons", "n": 40},
    }
    with pytest.raises(IncompatibleError, match=r"serves one continuous local site; this model has 20 \(z_20 … z_1\)"):
        pplvm.Run.from_card({**card, "guide": {"kind": "amortized"}})
    with pytest.raises(IncompatibleError, match=r"AutoNormal guides the global latents only.*continuous local"):
        pplvm.Run.from_card(
            {"model": {"family": "ppca", "latent_dim": 2}, "guide": {"kind": "AutoNormal"}, "data": {"source": "wine"}}
        )
