"""One field really swaps: for every shipped card, every objective its model admits (with the
card's guide) and every guide it admits (with an objective that guide can train: the card's, or
the first admitted), building the run from the card with that one field changed succeeds and
two training steps on a small batch give finite losses.

Cheap by construction: no epochs, no evaluation; each case builds the run and takes two steps on
8 rows. Cards that read a user's files (the MNIST IDX files, a binarized MNIST .npz) read small
stand-ins written at the paths they name (as test_readme.py does)."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch
from test_readme import binarized_mnist_file, cifar10_files, mnist_idx_files

import pplvm
from pplvm.families import FAMILIES
from pplvm.guides import GUIDES
from pplvm.guides import admitted as admitted_guides
from pplvm.objectives import admitted as admitted_objectives
from pplvm.objectives import settle
from pplvm.run import _fit_input
from pplvm.training.trainer import to_device

CARDS = sorted(Path(__file__).parent.parent.glob("models/*.toml"))
QUIET = ["training.progress=false", "training.compile=off"]
ROWS = 8  # rows of the batch each case steps on
CHAIN = 10  # a diffusion card's chain is cut to this many steps: what is swapped does not depend on T
WIDTH = 8  # and a U-Net card's base width to this


def swaps(path: Path) -> list[list[str]]:
    """The overrides to try on a card: one per admitted objective, one per admitted guide."""
    card = pplvm.load_card(path, QUIET)
    dataset = pplvm.load_dataset(card.data)
    model = FAMILIES[card.model.family].from_config(card.model, dataset.dim)
    settled = settle(card, model)
    traits = GUIDES[settled.guide.kind](settled.guide).traits(model)
    out = [[f"objective.name={name}"] for name in admitted_objectives(model, traits)]
    for kind in admitted_guides(model):
        if kind == "flow" and path.stem == "vae_bayes_decoder_digits":
            continue  # an IAF over the decoder's thousands of weights takes GBs: not a cheap check
        plugin = GUIDES[kind](GUIDES[kind].Config(kind=kind))
        names = admitted_objectives(model, plugin.traits(model))
        name = card.objective.name if card.objective.name in names else names[0]
        out.append([f"guide.kind={kind}", f"objective.name={name}"])
    return out


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A directory holding stand-ins for the files a card names relative to where it runs."""
    where = tmp_path_factory.mktemp("user")
    mnist_idx_files(where)
    binarized_mnist_file(where)
    cifar10_files(where)
    return where


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_every_admitted_objective_and_guide_builds_and_steps(path, user_files, monkeypatch):
    monkeypatch.chdir(user_files)
    for overrides in swaps(path):
        # the swapped section at the new objective's (guide's) defaults; the rest of the card as it is
        raw = pplvm.card_to_dict(pplvm.load_card(path, QUIET))
        for override in overrides:
            section = override.split(".")[0]
            raw[section] = {}
        if "steps" in raw["model"]:  # a chain of T latents: each step of a generic ELBO walks all T sites
            overrides = [*overrides, f"model.steps={min(raw['model']['steps'], CHAIN)}"]
        if "channels" in raw["model"]:  # nor on a U-Net's width (a CIFAR card's: 2.7 M weights)
            overrides = [*overrides, f"model.channels={min(raw['model']['channels'], WIDTH)}"]
        pyro.clear_param_store()
        try:
            card = pplvm.card_from_dict(raw, overrides)
            run = pplvm.Run.from_card(card)
        except Exception as err:
            raise AssertionError(f"{path.name} {overrides}: {err}") from err
        d = run.dataset
        train = d.train if d.augment is None else d.augment(d.train, torch.Generator().manual_seed(0))
        batch = to_device(_fit_input(run.traits, train)[:ROWS], run.device)
        n = len(run.dataset.train)
        run.rule.setup(batch, n)
        for step in range(2):
            loss = float(run.rule.step(batch, n, step / 10))
            assert math.isfinite(loss), (path.name, overrides, loss)
