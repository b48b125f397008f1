"""Fuzzing the card parser and ``--set`` overrides (hypothesis): whatever the card or the
override, pplvm either returns a valid card or raises a PplvmError — never another
exception. A valid card also survives the round trip through its TOML file unchanged.

Generated cards start from a valid one and are mutated where it matters: sections deleted or
replaced by scalars, known keys given values of every TOML type (inf and nan included), unknown
keys, random override paths and values, and raw TOML text with random bytes spliced in.
The default suite runs a few hundred examples; the slow one 10,000 per test.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pplvm.config import card_from_dict, card_to_dict, load_card, parse_value
from pplvm.errors import PplvmError

BASE = {
    "name": "fuzz",
    "model": {"family": "gmm", "components": 2},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 50, "components": 2},
    "training": {"epochs": 2, "progress": False},
}
SECTIONS = ["model", "guide", "objective", "data", "training", "evaluation", "logging"]
KEYS = [
    "family",
    "components",
    "covariance",
    "states",
    "latent_dim",
    "hidden",
    "kind",
    "init_scale",
    "name",
    "num_particles",
    "alpha",
    "kl_weight",
    "source",
    "n",
    "dim",
    "path",
    "valid_fraction",
    "split_seed",
    "standardize",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "seed",
    "clip_norm",
    "patience",
    "progress",
    "draws",
    "chains",
    "max_rows",
    "emission",
    "categories",
    "prior",
    "samples",
    "loggers",
]
NAMES = [
    "gmm",
    "hmm",
    "ppca",
    "fa",
    "vae",
    "cvae",
    "iris",
    "synthetic_gmm",
    "file",
    "meanfield",
    "map",
    "enum",
    "elbo",
    "adam",
    "full",
    "diag",
    "",
    "é",
    "\x00",
]

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
    st.dates(),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
paths = st.one_of(
    st.tuples(st.sampled_from(SECTIONS + ["name", "bogus", ""]), st.sampled_from(KEYS) | st.text(max_size=6)).map(
        ".".join
    ),
    st.text(max_size=12),
)


@st.composite
def cards(draw) -> dict:
    card = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(SECTIONS + ["name", "description", "extra"]))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "replace"]))
        if action == "delete":
            card.pop(section, None)
        elif action == "replace" or not isinstance(card.get(section, {}), dict):
            card[section] = draw(values)
        else:
            card.setdefault(section, {})[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = draw(values)
    return card


def _toml_literal(value) -> str:
    """``value`` as it would be typed after ``--set key=`` (a TOML literal)."""
    text = tomli_w.dumps({"v": value}) if not isinstance(value, dict) else "v = {}\n"
    return text.split("=", 1)[1].strip() if text.startswith("v =") else "{}"


override_strings = st.one_of(
    st.tuples(paths, st.one_of(values.map(_toml_literal), st.text(max_size=10))).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=20),
)


def _validate(raw, overrides) -> None:
    """The property: a valid card or a PplvmError; a valid card round-trips through TOML."""
    try:
        card = card_from_dict(raw, overrides)
    except PplvmError:
        return
    text = tomli_w.dumps(card_to_dict(card))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "card.toml"
        path.write_text(text)
        assert load_card(path) == card


def _check_file(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "card.toml"
        path.write_bytes(text)
        try:
            load_card(path)
        except PplvmError:
            pass


def _fuzz(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@st.composite
def card_texts(draw) -> bytes:
    """TOML text of a generated card with random bytes spliced in (often invalid TOML or UTF-8)."""
    raw = draw(cards())
    try:
        text = tomli_w.dumps(raw).encode()
    except (TypeError, ValueError):  # e.g. a NUL in a key: not writable as TOML
        text = b"[model]\nfamily = 'gmm'\n"
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(max_size=6)) + text[at:]
    return text


def _cards_test(n: int):
    @_fuzz(n)
    @given(cards(), st.lists(override_strings, max_size=3))
    def check(raw, overrides):
        _validate(raw, overrides)

    return check


def _dict_overrides_test(n: int):
    @_fuzz(n)
    @given(st.dictionaries(paths, values, max_size=3))
    def check(overrides):
        _validate(BASE, overrides)

    return check


def _files_test(n: int):
    @_fuzz(n)
    @given(card_texts())
    def check(text):
        _check_file(text)

    return check


test_fuzz_cards_and_set_overrides = _cards_test(400)
test_fuzz_dict_overrides = _dict_overrides_test(200)
test_fuzz_card_files = _files_test(200)


@pytest.mark.slow
def test_fuzz_cards_and_set_overrides_10k():
    _cards_test(10_000)()


@pytest.mark.slow
def test_fuzz_card_files_10k():
    _files_test(10_000)()


def test_parse_value_never_fails():
    """``--set`` values are TOML if they parse, else the raw string: nothing raises."""
    for text in ["inf", "nan", "1e999", "[1, 2", "'", "\x00", "1979-05-27", "{a = 1}", ""]:
        value = parse_value(text)
        assert value == text or isinstance(value, (int, float, list, dict, str)) or value is not None
    assert math.isinf(parse_value("inf"))
