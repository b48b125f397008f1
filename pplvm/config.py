"""Model cards: the declarative description of a run, validated.

A card is a TOML file (or the same nested dict from Python) with the sections

- ``[model]``      family and its hyperparameters (schema: the family's ``Config``);
- ``[guide]``      which guide and its options, e.g. ``kind = "meanfield"`` (schema: the guide's ``Config``);
- ``[objective]``  which objective and its options, e.g. ``name = "enum"`` (schema: the objective's ``Config``);
- ``[data]``       data source and its options (schema: the source's ``Config``);
- ``[training]``   optimiser, epochs, minibatches, early stopping, checkpoints;
- ``[evaluation]`` how a fitted run is evaluated: importance samples, posterior draws for
  arviz, the memory bound. Not part of the fitted model: a finished run is evaluated with other
  values (``pplvm evaluate RUN --samples 5000``) without touching its ``card.toml``;
- ``[logging]``    the experiment trackers the run is mirrored to (schema: :func:`pplvm.tracking.logging_schema`).

Validation errors name the key path (``training.lr``) and what was expected.
"""

from __future__ import annotations

import functools
import os
import tomllib
import warnings
from pathlib import Path
from typing import Annotated, Any, Union

import numpy as np
import tomli_w
from pydantic import BaseModel, Field, ValidationError, create_model

from .errors import ArgumentError, CardError
from .rundir import write_atomic
from .schema import MAX_SEED, Section
from .sections import EvaluationConfig, TrainingConfig  # noqa: F401  (the fixed sections, re-exported)
from .tracking import logging_schema

#: the sections that are unions tagged by a name: section -> (tag, default tag)
TAGGED = {
    "model": ("family", None),
    "data": ("source", None),
    "objective": ("name", "elbo"),
    "guide": ("kind", "meanfield"),
}


def _registry(section: str):
    """The registry whose entries declare the configs of a tagged section."""
    if section == "model":
        from .families import FAMILIES

        return FAMILIES
    if section == "data":
        from .data import SOURCES

        return SOURCES
    if section == "objective":
        from .objectives.base import OBJECTIVES

        return OBJECTIVES
    from .guides.base import GUIDES

    return GUIDES


@functools.cache
def section_schema(section: str) -> Any:
    """The pydantic type of a tagged section: a union of its registry's configs, tagged."""
    tag = TAGGED[section][0]
    configs = list(dict.fromkeys(e.Config for _, e in _registry(section).items()))
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Field(discriminator=tag)]


@functools.cache
def card_schema() -> type[BaseModel]:
    """The pydantic model of a whole card; model, data, guide and objective are unions tagged by name."""
    objective, guide = _registry("objective"), _registry("guide")
    return create_model(
        "Card",
        __base__=Section,
        name=(str, Field("untitled", description="the card's name; pplvm fit writes to runs/<name> without --out")),
        description=(str, Field("", description="what the card describes, in words")),
        model=(section_schema("model"), ...),
        guide=(section_schema("guide"), guide[TAGGED["guide"][1]].Config()),
        objective=(section_schema("objective"), objective[TAGGED["objective"][1]].Config()),
        data=(section_schema("data"), ...),
        training=(TrainingConfig, TrainingConfig()),
        evaluation=(EvaluationConfig, EvaluationConfig()),
        logging=(logging_schema(), logging_schema()()),
    )


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in 0 .. 2**32 - 1, else an :class:`ArgumentError` naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"{name}: expected an integer seed in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


def check_count(n: Any, name: str = "n") -> int:
    """``n`` as a positive int, else an :class:`ArgumentError` naming ``name``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ArgumentError(f"{name}: expected a positive integer, got {n!r}")
    return int(n)


def _allowed_keys(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a section at ``loc`` accepts, for 'unknown key' messages."""
    node: Any = schema
    for part in loc:
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return []
        node = fields[part].annotation
        args = getattr(node, "__args__", ())
        if fields and args and not isinstance(node, type):
            node = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), node)
    return sorted(getattr(node, "model_fields", {}))


def _describe(err: ValidationError, schema: type[BaseModel], raw: dict) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # Pydantic puts the union tag into the path (model.gmm.components): drop it.
        if len(loc) >= 2 and loc[0] in TAGGED and isinstance(raw.get(loc[0]), dict):
            if loc[1] == raw[loc[0]].get(TAGGED[loc[0]][0]):
                loc = (loc[0],) + loc[2:]
        path = ".".join(str(p) for p in loc) or "<card>"
        if e["type"] == "extra_forbidden":
            section = tuple(loc[:-1])
            if len(section) == 1 and section[0] in TAGGED:
                allowed = _tagged_keys(section[0], raw)
            else:
                allowed = _allowed_keys(schema, section)
            msg = _foreign(section, loc[-1], raw) + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "union_tag_invalid":
            tag = e["ctx"]["discriminator"].strip("'")
            expected = e["ctx"]["expected_tags"]
            if loc and loc[0] in TAGGED:  # in the order the registry lists them
                expected = ", ".join(repr(n) for n, _ in _registry(loc[0]).in_order())
            path, msg = f"{path}.{tag}", f"expected one of {expected} (got {e['ctx']['tag']!r})"
        elif e["type"] == "missing":
            msg = "missing required key"
        elif e["type"] == "value_error" and isinstance(e["input"], dict):
            # a section's own validator: its message names its keys; the section is not repeated
            msg = e["msg"].removeprefix("Value error, ")
            if msg.startswith(f"{path}."):
                lines.append(" ".join(msg.split()))
                continue
        else:
            msg = e["msg"].replace("Input should be", "expected").replace("Input tag", "tag")
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {' '.join(msg.split())}")
    return "invalid card: " + "; ".join(lines)  # one line, however many errors


def _tagged_keys(section: str, raw: dict) -> list[str]:
    registry, tag = _registry(section), TAGGED[section][0]
    name = raw.get(section, {}).get(tag)
    if name not in registry:
        return []
    return sorted(registry[name].Config.model_fields)


def _foreign(section: tuple, key: Any, raw: dict) -> str:
    """'unknown key', or, for an option of other objectives (guides) than the one named, which take it."""
    if len(section) != 1 or section[0] not in ("objective", "guide"):
        return "unknown key"
    tag = TAGGED[section[0]][0]
    named = raw.get(section[0], {}).get(tag)
    return _registry(section[0]).foreign_option(section[0], tag, named, key) or "unknown key"


def _with_tags(raw: dict) -> dict:
    """The card with each untagged objective or guide section given its tag (``custom`` where it
    names a ``target``, else the default), without the options of other objectives (guides) that
    hold the value at which they do nothing (a card that swaps only the name keeps working; any
    other value is refused as the option of another); a section that a pplvm before sections
    wrote out (every option of every objective or guide) is read the same way at its old defaults."""
    out = dict(raw)
    for section in ("objective", "guide"):
        value = out.get(section)
        if not isinstance(value, dict):
            continue
        tag, default = TAGGED[section]
        value = dict(value)
        value.setdefault(tag, "custom" if "target" in value else default)
        if isinstance(value[tag], str) and value[tag] in _registry(section):
            own = _registry(section)[value[tag]].Config.model_fields
            legacy = _LEGACY[section] if _LEGACY[section].keys() <= value.keys() else {}
            value = {k: v for k, v in value.items() if k in own or not (legacy.get(k, _idle(section, k)) == v)}
        out[section] = value
    return out


def _idle(section: str, key: str) -> Any:
    """The value at which an option of other objectives (guides) does nothing: the default every
    section that has it shares (a card that swaps only the name keeps working), else a marker."""
    defaults = {
        repr(e.Config.model_fields[key].default) for _, e in _registry(section).items() if key in e.Config.model_fields
    }
    if len(defaults) != 1:
        return _NONE
    return next(
        e.Config.model_fields[key].default for _, e in _registry(section).items() if key in e.Config.model_fields
    )


_NONE = object()


#: what a card of a pplvm before objective and guide sections holds in them, written out in full
_LEGACY = {
    "objective": {
        "alpha": 0.5,
        "weighting": "elbo",
        "em_estimate": "map",
        "em_step_decay": 0.6,
        "free_bits": 0.0,
        "kl_weight": 1.0,
        "kl_warmup_epochs": 0.0,
        "num_particles": 1,
        "vectorize_particles": True,
    },
    "guide": {"init_scale": 0.1, "flow_layers": 2, "flow_hidden": []},
}


def parse_value(text: str) -> Any:
    """Parse an override value as TOML (numbers, booleans, strings, arrays), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Return a copy of ``raw`` with ``key.path=value`` overrides applied."""
    if isinstance(overrides, (str, bytes)):
        raise CardError(
            f"overrides: expected a list of 'key.path=value' strings or a dict, got the string "
            f"{overrides!r} (write [{overrides!r}])"
        )
    if overrides is not None and not isinstance(overrides, (dict, list, tuple)):
        raise CardError(
            f"overrides: expected a list of 'key.path=value' strings or a dict, got {type(overrides).__name__}"
        )
    out = _deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides or []]
    for path, value in items:
        if not isinstance(path, str):
            raise CardError(f"override key {path!r}: expected a dotted key path string like training.lr")
        keys = path.split(".")
        if not all(keys):
            raise CardError(f"override {path!r}: expected a dotted key path like training.lr")
        node = out
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise CardError(f"override {path!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def _split(override: str) -> tuple[str, Any]:
    if not isinstance(override, str):
        raise CardError(f"override {override!r}: expected a 'key.path=value' string")
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise CardError(f"override {override!r}: expected key.path=value")
    return key.strip(), parse_value(value.strip())


def _deepcopy(d: dict) -> dict:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


#: keys that moved out of ``[model]`` because they act on evaluation, not on the fitted model
#: (so they are not part of a checkpoint's fingerprint): old key -> new key
MOVED_KEYS = {"model.likelihood_samples": "evaluation.samples"}


def _moved(raw: dict) -> dict:
    """``raw`` with each of :data:`MOVED_KEYS` it sets at its new place, with a FutureWarning
    (cards and run directories written before the move keep loading)."""
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = raw.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        raw = {**raw, old_section: {k: v for k, v in section.items() if k != old_key}}
        target = raw.get(new_section, {})
        if not isinstance(target, dict):
            continue  # validation names the broken section
        value = section[old_key]
        if new_key in target and target[new_key] != value:
            raise CardError(
                f"{old} = {value!r} has moved to {new}, which this card sets to {target[new_key]!r}: keep {new}"
            )
        raw[new_section] = {**target, new_key: value}
        warnings.warn(
            f"{old} is now {new} (it acts on evaluation, not on the fitted model); read as {new} = {value!r}",
            FutureWarning,
            stacklevel=3,
        )
    return raw


def card_from_dict(raw: dict, overrides: list[str] | dict[str, Any] | None = None) -> BaseModel:
    """Validate a card given as a nested dict (plus optional overrides); keys that moved
    (:data:`MOVED_KEYS`) are read at their new place."""
    if not isinstance(raw, dict):
        raise CardError(f"a card must be a table of sections, got {type(raw).__name__}")
    raw = _with_tags(_moved(apply_overrides(raw, overrides)))
    schema = card_schema()
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise CardError(_describe(err, schema, raw)) from None


def load_card(path: str | os.PathLike, overrides: list[str] | dict[str, Any] | None = None):
    """Read and validate a TOML model card."""
    path = Path(path)
    if path.is_dir():
        raise CardError(f"card {str(path)!r}: is a directory; expected a TOML file")
    if not path.is_file():
        raise CardError(f"card {str(path)!r}: no such file")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CardError(
            f"card {str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at position {err.start})"
        ) from None
    except OSError as err:
        raise CardError(f"card {str(path)!r}: cannot be read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise CardError(f"card {str(path)!r} is not valid TOML: {err}") from None
    return card_from_dict(raw, overrides)


def card_to_dict(card: BaseModel) -> dict:
    """A validated card as the nested dict :func:`card_from_dict` reads (options set to None left out)."""
    return card.model_dump(mode="json", exclude_none=True)


def dump_card(card: BaseModel, path: str | os.PathLike) -> None:
    write_atomic(path, tomli_w.dumps(card_to_dict(card)))
