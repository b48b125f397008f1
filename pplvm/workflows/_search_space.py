"""The search space of a sweep: ``--param KEY.PATH=KIND(ARGS)``, parsed strictly and checked
against the card schema before any trial runs.

Kinds (each a small class registered under its name; Optuna's ``suggest_*`` draws the value):

- ``uniform(a, b)``: a float in ``[a, b]``;
- ``loguniform(a, b)``: a float in ``[a, b]``, uniform in its log (``0 < a``);
- ``int(a, b)``: an integer in ``a .. b``;
- ``logint(a, b)``: an integer in ``a .. b``, uniform in its log (``1 <= a``);
- ``choice(v1, v2, ...)``: one of the values (TOML numbers, booleans, strings; a bare word is a string).

A key is checked the way ``pplvm fit --set KEY=VALUE`` checks it: the card is validated with
the key at each end of its range (at each choice), so an unknown key or a value the key does not
take is refused with the card's own one-line message, prefixed by the ``--param`` it came from.
"""

from __future__ import annotations

import abc
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .._registry import Registry
from ..config import card_from_dict, parse_value
from ..errors import ArgumentError, CardError

KINDS: Registry[type["Kind"]] = Registry("--param kind")
_SPEC = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


class Kind(abc.ABC):
    """A kind of parameter: what its arguments must be, and how a trial draws a value."""

    name: ClassVar[str]
    usage: ClassVar[str]  #: what is expected, e.g. ``loguniform(a, b) with 0 < a < b``

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        KINDS.register(cls.name)(cls)

    @classmethod
    @abc.abstractmethod
    def check(cls, values: tuple) -> tuple:
        """``values`` as the kind takes them; ValueError (its message: what is wrong) otherwise."""

    @classmethod
    @abc.abstractmethod
    def suggest(cls, trial: Any, key: str, values: tuple) -> Any:
        """The value an Optuna ``trial`` draws for ``key`` from this kind's range ``values``."""


def _numbers(values: tuple, integer: bool, low: float) -> tuple:
    if len(values) != 2:
        raise ValueError(f"got {len(values)} argument{'s' * (len(values) != 1)}")
    typ = int if integer else (int, float)
    if not all(isinstance(v, typ) and not isinstance(v, bool) for v in values):
        raise ValueError(f"got {', '.join(repr(v) for v in values)}")
    a, b = values
    if not (math.isfinite(a) and math.isfinite(b) and low <= a < b):
        raise ValueError(f"got a = {a!r}, b = {b!r}")
    return (a, b) if integer else (float(a), float(b))


class Uniform(Kind):
    name, usage = "uniform", "uniform(a, b): two numbers with a < b"

    @classmethod
    def check(cls, values):
        return _numbers(values, False, -math.inf)

    @classmethod
    def suggest(cls, trial, key, values):
        return trial.suggest_float(key, *values)


class LogUniform(Kind):
    name, usage = "loguniform", "loguniform(a, b): two numbers with 0 < a < b"

    @classmethod
    def check(cls, values):
        a, b = _numbers(values, False, -math.inf)
        if a <= 0:
            raise ValueError(f"got a = {a!r}")
        return a, b

    @classmethod
    def suggest(cls, trial, key, values):
        return trial.suggest_float(key, *values, log=True)


class Int(Kind):
    name, usage = "int", "int(a, b): two integers with a < b"

    @classmethod
    def check(cls, values):
        return _numbers(values, True, -math.inf)

    @classmethod
    def suggest(cls, trial, key, values):
        return trial.suggest_int(key, *values)


class LogInt(Kind):
    name, usage = "logint", "logint(a, b): two integers with 1 <= a < b"

    @classmethod
    def check(cls, values):
        return _numbers(values, True, 1)

    @classmethod
    def suggest(cls, trial, key, values):
        return trial.suggest_int(key, *values, log=True)


class Choice(Kind):
    name, usage = "choice", "choice(v1, v2, ...): two or more different numbers, booleans or strings"

    @classmethod
    def check(cls, values):
        if len(values) < 2:
            raise ValueError(f"got {len(values)} value{'s' * (len(values) != 1)} (a fixed value is --set KEY=VALUE)")
        if not all(isinstance(v, (bool, int, float, str)) for v in values):
            raise ValueError(f"got {', '.join(repr(v) for v in values)}")
        if len({(type(v), v) for v in values}) < len(values):
            raise ValueError("got a value twice")
        return values

    @classmethod
    def suggest(cls, trial, key, values):
        return trial.suggest_categorical(key, list(values))


@dataclass(frozen=True)
class Param:
    """One swept card key: ``key`` drawn as ``kind`` from ``values``; ``text`` as the user wrote it."""

    key: str
    kind: str
    values: tuple
    text: str

    def suggest(self, trial: Any) -> Any:
        """This key's value for ``trial`` (an :class:`optuna.trial.Trial`)."""
        return KINDS[self.kind].suggest(trial, self.key, self.values)

    @property
    def log(self) -> bool:
        """Whether the kind is uniform in the log (its plots use a log axis)."""
        return self.kind.startswith("log")


def _arguments(text: str) -> tuple:
    """``1e-4, 1e-2`` or ``"a", b, 3`` as values: a TOML array where it parses, else each
    comma-separated piece as ``--set`` reads a value (a bare word is a string)."""
    try:
        return tuple(tomllib.loads(f"v = [{text}]")["v"])
    except tomllib.TOMLDecodeError:
        return tuple(parse_value(p.strip()) for p in text.split(",")) if text.strip() else ()


def parse_param(text: str) -> Param:
    """``KEY.PATH=KIND(ARGS)`` as a :class:`Param`; an :class:`~pplvm.errors.ArgumentError`
    naming ``--param`` and what was expected otherwise."""
    kinds = ", ".join(k.usage.split(":")[0] for _, k in KINDS.in_order())
    match = _SPEC.match(text)
    if match is None:
        raise ArgumentError(f"--param {text!r}: expected KEY.PATH=KIND(ARGS) with KIND one of: {kinds}")
    key, kind, args = match.groups()
    if kind not in KINDS:
        raise ArgumentError(f"--param {text!r}: unknown kind {kind!r}; expected one of: {kinds}")
    cls = KINDS[kind]
    try:
        values = cls.check(_arguments(args))
    except ValueError as err:
        raise ArgumentError(f"--param {text!r}: expected {cls.usage}; {err}") from None
    return Param(key, kind, values, text.strip())


def parse_space(texts: Sequence[str], fixed: Sequence[str] = ()) -> list[Param]:
    """Every ``--param``, each key once and none also fixed by ``--set`` (``fixed``)."""
    if not texts:
        raise ArgumentError("--param: expected at least one, e.g. --param training.lr=loguniform(1e-4,1e-2)")
    params, seen = [parse_param(t) for t in texts], set()
    fixed_keys = {f.partition("=")[0].strip() for f in fixed}
    for p in params:
        if p.key in seen:
            raise ArgumentError(f"--param {p.text!r}: {p.key} is swept twice; give each key one --param")
        if p.key in fixed_keys:
            raise ArgumentError(f"--param {p.text!r}: {p.key} is also fixed by --set; give it one or the other")
        seen.add(p.key)
    return params


def check_space(raw: dict, params: Sequence[Param]) -> None:
    """Validate the card ``raw`` (its ``--set`` overrides applied) at each end of every range and
    at every choice, the other keys at their first value: a key the card schema does not have,
    or a value it does not take, is refused before any trial runs."""
    first = {p.key: p.values[0] for p in params}
    for p in params:
        for value in p.values:
            try:
                card_from_dict(raw, {**first, p.key: value})
            except CardError as err:
                raise CardError(f"--param {p.text!r} at {p.key} = {value!r}: {err}") from None
