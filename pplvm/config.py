"""Model cards: the declarative description of a run, validated.

A card is a TOML file (or the same nested dict from Python) with the sections

- ``[model]``      family and its hyperparameters (schema: the family's ``Config``);
- ``[guide]``      which guide, e.g. ``kind = "meanfield"``;
- ``[objective]``  which objective, e.g. ``name = "enum"``;
- ``[data]``       data source and its options (schema: the source's ``Config``);
- ``[training]``   optimiser, epochs, minibatches, early stopping, checkpoints;
- ``[evaluation]`` how a fitted run is evaluated: importance samples, posterior draws for
  arviz, the memory bound. Not part of the fitted model: a finished run is evaluated with other
  values (``pplvm evaluate RUN --samples 5000``) without touching its ``card.toml``.

Validation errors name the key path (``training.lr``) and what was expected.
"""

from __future__ import annotations

import functools
import os
import tomllib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import tomli_w
from pydantic import BaseModel, Field, ValidationError, create_model

from .errors import ArgumentError, CardError
from .rundir import write_atomic
from .schema import MAX_SEED, Section, Seed

ObjectiveName = Literal[
    "elbo",
    "meanfield",
    "enum",
    "renyi",
    "iwae",
    "iwae_dreg",
    "stl",
    "diffusion",
    "vdm",
    "gan",
    "gan_hinge",
    "wgan_gp",
    "em",
]


class GuideConfig(Section):
    kind: str = Field("meanfield", description="guide name; `pplvm list` shows each family's")
    init_scale: float = Field(0.1, gt=0, description="initial posterior scale of normal guides")
    flow_layers: int = Field(2, ge=1, description="flow guide: inverse autoregressive steps")
    flow_hidden: list[int] = Field(
        [],
        description="flow guide: hidden widths of each step's network "
        "(at least the latent dimension; default one layer of twice it)",
    )


class ObjectiveConfig(Section):
    name: ObjectiveName = "elbo"
    num_particles: int = Field(1, ge=1, description="Monte Carlo particles (k for iwae)")
    alpha: float = Field(0.5, description="Renyi alpha (renyi only)")
    vectorize_particles: bool = True
    kl_weight: float = Field(
        1.0, gt=0, description="weight β of the local latents' log p(z) - log q(z|x) (their KL); 1 is the ELBO"
    )
    kl_warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="KL warm-up: β rises linearly from 0 to kl_weight over this many epochs, step by step; 0 = off",
    )
    free_bits: float = Field(
        0.0,
        ge=0,
        description="free bits: nats per latent dimension (minibatch mean) "
        "below which the KL is not penalised; needs name = 'meanfield'",
    )
    weighting: Literal["elbo", "simple"] = Field(
        "elbo", description="diffusion: the ELBO's weights of the steps, or Ho et al.'s L_simple (not a bound)"
    )
    em_estimate: Literal["map", "ml"] = Field(
        "map",
        description="em only: 'map' (the M-step maximises the posterior under the family's priors) "
        "or 'ml' (maximum likelihood, priors ignored: what scikit-learn and hmmlearn fit)",
    )
    em_step_decay: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="em with minibatches (stepwise EM): step size (k + 1)^-decay for the k-th minibatch's statistics",
    )


class TrainingConfig(Section):
    epochs: int = Field(100, ge=1)
    batch_size: int | None = Field(None, ge=1, description="minibatch size; none = full batch")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.9, 0.999],
        min_length=2,
        max_length=2,
        description="adam / adamw: the moment decay rates [β1, β2], each in [0, 1)",
    )
    eps: float = Field(
        1e-8,
        gt=0,
        description="adam / adamw / rmsprop: ε of the update's denominator, relative "
        "to the gradient of the loss per datum (the IWAE paper's Adam: 1e-4)",
    )
    lr_schedule: Literal["constant", "exponential", "cosine", "iwae"] = Field(
        "constant",
        description="constant | exponential | cosine (to lr * lr_final_ratio over the epochs) | iwae "
        "(Burda et al. 2016: 3^i epochs at lr * 10^(-i/7), i = 0..7, 3280 epochs in all; then the last)",
    )
    lr_final_ratio: float = Field(0.1, gt=0, le=1, description="final lr / lr for decaying schedules")
    clip_norm: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    min_delta: float = Field(0.0, ge=0, description="early stopping: smallest improvement that counts")
    eval_every: int = Field(1, ge=1, description="held-out evaluation every this many epochs")
    checkpoint_every: int | None = Field(
        None, ge=1, description="checkpoint every this many epochs; none = by time (checkpoint_seconds)"
    )
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="without checkpoint_every: at most one "
        "checkpoint per this many seconds (the first and last epochs always)",
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto (a GPU when there is one) | cpu | cuda | cuda:N"
    )
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="fp32 | bf16 (autocast; log-probabilities and reductions stay fp32) | tf32 (CUDA)"
    )
    compile: Literal["auto", "trace", "inductor", "off"] = Field(
        "auto",
        description="auto (after 200 steps the SVI step is traced once into a flat graph; a CUDA graph "
        "on CUDA) | trace (from the second step) | inductor (traced, then torch.compile) | off (Pyro's plain "
        "step); a dynamic structure falls back to off with a log line",
    )
    seed: Seed = 0
    progress: bool = True
    pyro_validation: Literal["first_step", "every_step"] = Field(
        "first_step", description="Pyro's distribution checks on the first step of a fit, or on every step"
    )


class EvaluationConfig(Section):
    samples: int | None = Field(
        None,
        ge=1,
        description="importance samples per datum of an estimated log-likelihood (a family whose likelihood "
        "is 'estimate': VAE, continuous local latents, a dequantised flow); none = the family's default (100; "
        "a dequantised flow 64); pplvm evaluate --samples overrides it",
    )
    draws: int = Field(100, ge=1, description="posterior draws per chain for arviz")
    chains: int = Field(4, ge=1, description="independent guide draws are split into this many chains")
    max_rows: int = Field(5000, ge=1, description="rows of data kept in the arviz export (a random subset)")
    memory_mb: float = Field(
        512.0,
        gt=0,
        description="bound on the working memory of every evaluation and "
        "export pass (log-likelihood over draws x data, replicates, local posteriors), in MB; "
        "see pplvm.evaluation.memory",
    )


@functools.cache
def card_schema() -> type[BaseModel]:
    """The pydantic model of a whole card; model and data are unions tagged by name."""
    from .data import SOURCES
    from .families import FAMILIES

    def tagged(configs: list[type[BaseModel]], tag: str) -> Any:
        if len(configs) == 1:
            return configs[0]
        return Annotated[Union[tuple(configs)], Field(discriminator=tag)]

    return create_model(
        "Card",
        __base__=Section,
        name=(str, "untitled"),
        description=(str, ""),
        model=(tagged([cls.Config for _, cls in FAMILIES.items()], "family"), ...),
        guide=(GuideConfig, GuideConfig()),
        objective=(ObjectiveConfig, ObjectiveConfig()),
        data=(tagged([src.Config for _, src in SOURCES.items()], "source"), ...),
        training=(TrainingConfig, TrainingConfig()),
        evaluation=(EvaluationConfig, EvaluationConfig()),
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
        if len(loc) >= 2 and loc[0] in ("model", "data") and isinstance(raw.get(loc[0]), dict):
            tag = raw[loc[0]].get("family" if loc[0] == "model" else "source")
            if loc[1] == tag:
                loc = (loc[0],) + loc[2:]
        path = ".".join(str(p) for p in loc) or "<card>"
        if e["type"] == "extra_forbidden":
            section = tuple(loc[:-1])
            if section and section[0] in ("model", "data"):
                allowed = _tagged_keys(section[0], raw)
            else:
                allowed = _allowed_keys(schema, section)
            msg = "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "union_tag_invalid":
            tag = e["ctx"]["discriminator"].strip("'")
            path, msg = f"{path}.{tag}", f"expected one of {e['ctx']['expected_tags']} (got {e['ctx']['tag']!r})"
        elif e["type"] == "missing":
            msg = "missing required key"
        else:
            msg = e["msg"].replace("Input should be", "expected").replace("Input tag", "tag")
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {' '.join(msg.split())}")
    return "invalid card: " + "; ".join(lines)  # one line, however many errors


def _tagged_keys(section: str, raw: dict) -> list[str]:
    from .data import SOURCES
    from .families import FAMILIES

    registry, tag = (FAMILIES, "family") if section == "model" else (SOURCES, "source")
    name = raw.get(section, {}).get(tag)
    if name not in registry:
        return []
    return sorted(registry[name].Config.model_fields)


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
    raw = _moved(apply_overrides(raw, overrides))
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
    return card.model_dump(mode="json", exclude_none=True)


def dump_card(card: BaseModel, path: str | os.PathLike) -> None:
    write_atomic(path, tomli_w.dumps(card_to_dict(card)))
