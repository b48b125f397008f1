"""Model cards: validation messages name the key path and what was expected; overrides parse
TOML values; cards round-trip; every shipped card in models/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest

import pplvm
from pplvm.config import apply_overrides, card_from_dict, card_to_dict, dump_card, load_card, parse_value

BASE = {"model": {"family": "gmm"}, "objective": {"name": "enum"}, "data": {"source": "iris"}}
MODELS = sorted((Path(__file__).parents[1] / "models").glob("*.toml"))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_shipped_cards_validate(path):
    card = load_card(path)
    assert card.model.family in pplvm.FAMILIES


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.foo=1"], r"model\.foo: unknown key; expected one of: .*components"),
        (["training.lr=-1"], r"training\.lr: expected greater than 0 \(got -1\)"),
        (["training.epochs='ten'"], r"training\.epochs: expected a valid integer \(got 'ten'\)"),
        (["training.epochs=2.5"], r"training\.epochs: expected a valid integer"),
        (["model.components=0"], r"model\.components: expected greater than or equal to 1"),
        (["model.covariance='tied'"], r"model\.covariance: expected 'diag' or 'full' \(got 'tied'\)"),
        (["objective.name='vi'"], r"objective\.name: expected one of 'elbo', 'meanfield', .* \(got 'vi'\)"),
        (["model.family='nope'"], r"model\.family: expected .*'gmm'.* \(got 'nope'\)"),
        (["data.source='mnist'"], r"data\.source: expected one of .*'iris'.* \(got 'mnist'\)"),
        (["trainin.lr=1"], r"trainin: unknown key; expected one of: .*training"),
        (["training.progress=1"], r"training\.progress: expected a valid boolean"),
    ],
)
def test_invalid_values_are_named(overrides, message):
    with pytest.raises(pplvm.CardError, match=message):
        card_from_dict(BASE, overrides)


def test_all_errors_are_reported_at_once():
    with pytest.raises(pplvm.CardError) as err:
        card_from_dict(BASE, ["training.lr=0", "model.components=-2"])
    text = str(err.value)
    assert "training.lr" in text and "model.components" in text


def test_missing_sections_and_files():
    with pytest.raises(pplvm.CardError, match="model: missing required key"):
        card_from_dict({"data": {"source": "iris"}})
    with pytest.raises(pplvm.CardError, match="no such file"):
        load_card("nope.toml")


def test_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\nfamily = 'gmm'")
    with pytest.raises(pplvm.CardError, match="bad.toml.*not valid TOML"):
        load_card(path)


@pytest.mark.parametrize("bad", ["training.lr", "=3", ".a=1"])
def test_malformed_overrides(bad):
    with pytest.raises(pplvm.CardError, match="override"):
        card_from_dict(BASE, [bad])


def test_overrides_parse_toml_values():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("'full'") == "full" and parse_value("full") == "full"
    assert parse_value("[1, 2]") == [1, 2]
    raw = apply_overrides(BASE, ["model.components=4", "training.lr=1e-3", "model.covariance=full"])
    card = card_from_dict(raw)
    assert (card.model.components, card.training.lr, card.model.covariance) == (4, 1e-3, "full")
    assert BASE["model"] == {"family": "gmm"}  # the caller's dict is not mutated


def test_card_round_trip_keeps_every_default(tmp_path):
    card = card_from_dict(BASE, ["training.batch_size=32"])
    dump_card(card, tmp_path / "card.toml")
    assert load_card(tmp_path / "card.toml") == card
    text = (tmp_path / "card.toml").read_text()
    assert "lr = 0.01" in text and "batch_size = 32" in text  # resolved defaults written out
    assert card_from_dict(card_to_dict(card)) == card


VAE = {"model": {"family": "vae"}, "data": {"source": "digits"}}


def test_a_key_that_moved_to_evaluation_is_read_at_its_new_place():
    """``model.likelihood_samples`` (before evaluation settings left [model]) is read as
    ``evaluation.samples`` with a warning naming both; set both ways differently, it is refused.
    The shipped cards use the new place (test_shipped_cards_validate runs warnings as errors)."""
    assert card_from_dict(VAE).evaluation.samples is None  # the family's default
    with pytest.warns(FutureWarning, match=r"model.likelihood_samples is now evaluation.samples .* = 50"):
        card = card_from_dict(VAE, ["model.likelihood_samples=50"])
    assert card.evaluation.samples == 50 and "likelihood_samples" not in card_to_dict(card)["model"]
    with pytest.warns(FutureWarning):
        assert card_from_dict(VAE, {"model.likelihood_samples": 50, "evaluation.samples": 50}).evaluation.samples == 50
    with pytest.raises(
        pplvm.CardError,
        match=r"model.likelihood_samples = 50 has moved to evaluation.samples, which this card sets to 7",
    ):
        card_from_dict(VAE, {"model.likelihood_samples": 50, "evaluation.samples": 7})
    with pytest.raises(pplvm.CardError, match=r"evaluation.samples: expected greater than or equal to 1"):
        card_from_dict(VAE, ["evaluation.samples=0"])
