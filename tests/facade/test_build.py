"""Building a run: from a card and from a run directory through one path, which checks the
card's pairing of model, objective and guide once per build, before the guide exists."""

from __future__ import annotations

import pytest
import torch

import pplvm
from pplvm.objectives.base import Objective

CARD = {
    "name": "b",
    "model": {"family": "gmm", "components": 2},
    "guide": {"kind": "meanfield"},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 60, "dim": 2, "components": 2},
    "training": {"epochs": 2, "batch_size": 30, "progress": False},
    "evaluation": {"draws": 4, "chains": 2},
}


@pytest.fixture
def checks(monkeypatch):
    """Every call of the pairing check, wherever the facade or the objectives make it."""
    calls = []
    real = Objective.check

    def spy(self, *args, **kwargs):
        calls.append(self.config.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Objective, "check", spy)
    return calls


@pytest.mark.parametrize("objective", ["enum", "em"])
def test_from_card_load_and_resume_each_check_the_pairing_once(tmp_path, checks, objective):
    card = {**CARD, "objective": {"name": objective}, "guide": {"kind": "map" if objective == "em" else "meanfield"}}
    run = pplvm.Run.from_card(card)
    assert checks == [objective]
    run.fit(tmp_path / "r")
    checks.clear()
    pplvm.Run.load(tmp_path / "r")
    assert checks == [objective]
    checks.clear()
    pplvm.Run.resume(tmp_path / "r", epochs=3)
    assert checks == [objective]


def test_an_impossible_pairing_is_refused_before_the_guide_is_built(monkeypatch):
    from pplvm.facade import build

    monkeypatch.setattr(build, "make_guide", lambda *a, **k: pytest.fail("the guide was built"))
    card = {**CARD, "objective": {"name": "em"}, "guide": {"kind": "meanfield"}}
    with pytest.raises(pplvm.IncompatibleError, match="it needs a guide that holds one, guide.kind = 'map'"):
        pplvm.Run.from_card(card)


def test_a_loaded_run_reads_its_data_again_and_a_python_one_says_it_cannot(tmp_path):
    """``run.dataset`` after ``pplvm.load``: the card's data, split as at fit time (the same rows
    in every split, the same standardisation); a run fitted on arrays from Python has none to
    read, and says so in one line."""
    card = {**CARD, "data": {**CARD["data"], "standardize": True, "test_fraction": 0.2}}
    run = pplvm.fit(card, out=tmp_path / "card")
    back = pplvm.load(tmp_path / "card")
    for part in ("train", "valid", "test"):
        assert torch.equal(getattr(back.dataset, part), getattr(run.dataset, part))
    assert torch.equal(back.dataset.transform.scale, run.transform.scale)
    with pytest.raises(pplvm.RunDirError, match="use Run.resume"):  # loaded runs continue by resume
        back.fit(tmp_path / "again")

    x = run.transform.inverse(run.dataset.train).numpy()
    pplvm.fit({**CARD, "data": {"source": "file", "path": "unused.npy"}}, out=tmp_path / "py", data=x)
    with pytest.raises(pplvm.RunDirError, match=r"^run.dataset: this run was fitted on data passed from Python"):
        pplvm.load(tmp_path / "py").dataset
