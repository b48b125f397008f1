"""Objectives as plugins: Pyro's ELBOs by class name give pplvm's short names' losses exactly,
options of another objective are refused with the card, refusals name the missing capability,
and a user's objective (and guide) by import path fits, saves, loads and resumes."""

from __future__ import annotations

import math

import pytest
import torch

import pplvm
from pplvm.errors import CardError, IncompatibleError
from pplvm.objectives import OBJECTIVES, PYRO_ELBOS

GMM = {
    "model": {"family": "gmm", "components": 2},
    "guide": {"kind": "meanfield"},
    "objective": {"name": "enum"},
    "data": {"source": "iris"},
    "training": {"epochs": 3, "progress": False, "compile": "off", "seed": 1},
    "evaluation": {"draws": 2, "chains": 1, "max_rows": 5},
}
PPCA = {
    "model": {"family": "ppca", "latent_dim": 2, "prior": "normal"},
    "guide": {"kind": "amortized"},
    "objective": {"name": "elbo"},
    "data": {"source": "wine"},
    "training": {"epochs": 3, "progress": False, "compile": "off", "seed": 1},
    "evaluation": {"draws": 2, "chains": 1, "max_rows": 5},
}


def losses(card: dict) -> list[float]:
    return [h["train_loss"] for h in pplvm.fit(card).history]


@pytest.mark.parametrize(
    "card, short, pyro_name",
    [(PPCA, "elbo", "Trace_ELBO"), (PPCA, "meanfield", "TraceMeanField_ELBO"), (GMM, "enum", "TraceEnum_ELBO")],
)
def test_a_pyro_class_by_name_is_the_short_name_exactly(card, short, pyro_name):
    """The same Pyro class behind both names, the same seed: the same losses, bit for bit."""
    a = losses({**card, "objective": {"name": short}})
    b = losses({**card, "objective": {"name": pyro_name}})
    assert a == b and all(math.isfinite(v) for v in a)


def test_every_trainable_pyro_elbo_is_registered_with_its_options():
    assert {"Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO", "RenyiELBO", "JitTrace_ELBO"} <= set(PYRO_ELBOS)
    assert OBJECTIVES["RenyiELBO"].Config(name="RenyiELBO").alpha == 0  # Pyro's own default
    assert OBJECTIVES["TraceTailAdaptive_ELBO"].Config(name="TraceTailAdaptive_ELBO").num_particles == 2


def test_tracegraph_elbo_fits_the_vae():
    card = pplvm.load_card(
        "models/vae_digits.toml",
        ["objective.name=TraceGraph_ELBO", "training.epochs=3", "training.progress=false", "training.compile=off"],
    )
    assert card.objective.kl_warmup_epochs == 10  # the card's β warm-up carries over (its free_bits = 0 is idle)
    run = pplvm.fit(pplvm.card_from_dict(pplvm.card_to_dict(card), ["objective.kl_warmup_epochs=0"]))
    first, last = run.history[0]["train_loss"], run.history[-1]["train_loss"]
    assert math.isfinite(last) and last < first
    # every guide site is reparameterised, so its surrogate's gradient is Trace_ELBO's: the same fit
    elbo = pplvm.fit(pplvm.card_from_dict(pplvm.card_to_dict(run.card), ["objective.name=elbo"]))
    # (to float32 rounding: the surrogate sums the same terms in another order, ~1e-7 relative)
    torch.testing.assert_close(
        torch.tensor([h["train_loss"] for h in run.history]), torch.tensor([h["train_loss"] for h in elbo.history])
    )


def test_an_option_of_another_objective_is_refused_naming_who_takes_it():
    with pytest.raises(CardError, match=r"objective.alpha: objective.name = 'elbo' takes no such option .*renyi"):
        pplvm.card_from_dict({**PPCA, "objective": {"name": "elbo", "alpha": 0.3}})
    with pytest.raises(CardError, match=r"guide.flow_layers: guide.kind = 'amortized' takes no such option .*flow"):
        pplvm.card_from_dict({**PPCA, "guide": {"kind": "amortized", "flow_layers": 3}})


@pytest.mark.parametrize(
    "card, section, message",
    [
        (GMM, {"objective": {"name": "elbo"}}, r"cannot train family 'gmm': its discrete latent\(s\) assignment"),
        (PPCA, {"objective": {"name": "enum"}}, r"'enum' cannot train family 'ppca': .*not enumerated"),
        (PPCA, {"objective": {"name": "gan"}}, r"'gan' cannot train family 'ppca': .*implicit density"),
        (GMM, {"objective": {"name": "em"}}, r"point estimate .*guide.kind = 'map'"),
        (PPCA, {"objective": {"name": "iwae", "num_particles": 1}}, r"iwae needs k >= 2"),
        (PPCA, {"objective": {"name": "diffusion"}}, r"diffusion family's noise schedule"),
    ],
)
def test_refusals_name_the_missing_capability(card, section, message):
    with pytest.raises(IncompatibleError, match=message):
        pplvm.Run.from_card({**card, **section})


def test_em_with_auto_guide_and_estimate_settles_and_records_them():
    card = pplvm.load_card("models/gmm_iris.toml", ["objective.name=em", "training.progress=false"])
    run = pplvm.Run.from_card(card)
    assert run.card.guide.kind == "map" and run.card.objective.em_estimate == "ml"  # full covariance: ML only


def test_user_objective_and_guide_by_import_path_fit_save_load_and_resume(tmp_path):
    card = {
        **GMM,
        "objective": {"target": "user_plugins:EnumELBO", "options": {"num_particles": 1}},
        "guide": {"target": "user_plugins:DiagonalGlobals", "options": {"scale": 0.05}},
        "training": {**GMM["training"], "checkpoint_every": 1},
    }
    run = pplvm.fit(card, tmp_path / "run")
    assert run.card.objective.name == "custom" and run.card.guide.kind == "custom"
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    loaded = pplvm.load(tmp_path / "run")
    x = run.dataset.valid
    torch.testing.assert_close(loaded.log_likelihood(x), run.log_likelihood(x))
    assert loaded.draws(3)["locs"].shape[0] == 3
    resumed = pplvm.Run.resume(tmp_path / "run", epochs=4)
    assert len(resumed.history) == 4
    # held to the same declarations: the user's enumerating objective cannot train a PPCA
    with pytest.raises(IncompatibleError, match="not enumerated"):
        pplvm.Run.from_card({**PPCA, "objective": {"target": "user_plugins:EnumELBO"}})


def test_an_objective_object_from_python_fits_loads_and_resumes(tmp_path):
    """``pplvm.fit(card, objective=Trace_ELBO())``: the card records ``custom``, the losses are
    those of ``objective.name = "elbo"`` (the same estimator), and load / resume need the object."""
    from pyro.infer import Trace_ELBO

    run = pplvm.fit(PPCA, tmp_path / "run", objective=Trace_ELBO())
    assert pplvm.load_card(tmp_path / "run" / "card.toml").objective.name == "custom"
    torch.testing.assert_close(torch.tensor([h["train_loss"] for h in run.history]), torch.tensor(losses(PPCA)))
    with pytest.raises(CardError, match="pass objective= from Python"):
        pplvm.load(tmp_path / "run")
    loaded = pplvm.load(tmp_path / "run", objective=Trace_ELBO())
    x = run.dataset.valid
    torch.testing.assert_close(loaded.log_likelihood(x), run.log_likelihood(x))
    resumed = pplvm.Run.resume(tmp_path / "run", epochs=4, objective=Trace_ELBO())
    assert len(resumed.history) == 4 and all(math.isfinite(h["train_loss"]) for h in resumed.history)
