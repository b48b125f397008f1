"""Your own objective, by import path (``objective.target = "pkg.mod:Name"``) or passed as an
object from Python (``pplvm.fit(card, objective=...)``): an :class:`~.base.Objective` plugin class
(it declares its own needs), a Pyro :class:`~pyro.infer.ELBO` class or instance (held to what
Pyro's ELBOs need, see :mod:`.pyro_elbos`), or an :class:`~pplvm.training.rules.UpdateRule`
class built as ``Name(model, guide, card, **options)``. ``objective.options`` are the keyword
arguments of the class (the plugin's own card section, the ELBO's constructor)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pyro.infer import ELBO

from .._targets import TARGET_PATTERN, first_line, resolve
from ..errors import CardError
from ..training.rules import UpdateRule
from .base import Objective, ObjectiveConfig
from .pyro_elbos import _register
from .svi import SVIObjective


class Custom(Objective):
    """Your own objective: objective.target = 'pkg.mod:Name' (an Objective plugin, a Pyro ELBO or an UpdateRule
    class), or objective= from Python.

    What it computes is yours; ``objective.options`` are the class's keyword arguments. An
    :class:`~pplvm.objectives.base.Objective` plugin class declares its own needs and update
    rule; a Pyro ``ELBO`` class or instance is held to what Pyro's ELBOs by name need (a
    differentiable loss, enumerated locals only for an enumerating ELBO ...) and trained by SVI;
    an :class:`~pplvm.training.rules.UpdateRule` class, built as ``Name(model, guide, card,
    **options)``, does whatever it does to each batch and needs nothing.

    **Needs** a target, or an object passed from Python.
    """

    names = ("custom",)

    class Config(ObjectiveConfig):
        target: str | None = Field(
            None,
            pattern=TARGET_PATTERN,
            description="'package.module:Name' of an Objective plugin, a Pyro ELBO or an UpdateRule class; "
            "unset when passed from Python (pplvm.fit(card, objective=...))",
        )
        options: dict[str, Any] = Field({}, description="keyword arguments of the target")

    def __init__(self, config: ObjectiveConfig, obj: Any = None):
        super().__init__(config)
        if obj is None and config.target is None:
            raise CardError(
                "objective.target: expected 'package.module:Name' of your objective (or pass objective= from Python)"
            )
        self.inner = _plugin(obj if obj is not None else resolve(config.target, "objective.target"), config.options)

    def refusal(self, model: Any, guide: Any) -> str | None:
        return self.inner.refusal(model, guide)

    def check_guide(self, model: Any, guide: Any, args: tuple = (), kwargs: dict | None = None) -> None:
        self.inner.check_guide(model, guide, args, kwargs)

    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> Any:
        return self.inner.rule(model, guide, card, held_out=held_out)

    def globals_label(self) -> str:
        return self.inner.globals_label()


class _Instance(SVIObjective):
    """A Pyro ELBO object passed from Python, used as it is."""

    def __init__(self, config: ObjectiveConfig, elbo: ELBO):
        super().__init__(config)
        self._elbo = elbo

    def elbo(self, model: Any) -> ELBO:
        return self._elbo


class _Rule(Objective):
    """An update rule class of the user's, built as ``cls(model, guide, card, **options)``."""

    def __init__(self, config: ObjectiveConfig, cls: type[UpdateRule], options: dict[str, Any]):
        super().__init__(config)
        self.cls, self.options = cls, options

    def refusal(self, model: Any, guide: Any) -> str | None:
        return None

    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> UpdateRule:
        return self.cls(model, guide, card, **self.options)


def _plugin(obj: Any, options: dict[str, Any]) -> Objective:
    """The objective plugin for what a target names (or an object passed from Python)."""
    label = "objective.target"
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, type) and issubclass(obj, Objective):
        return obj(_config(obj.Config, options, obj.names[0] if obj.names else "custom"))
    if isinstance(obj, type) and issubclass(obj, ELBO):
        plugin = _register(obj, register=False)
        return plugin(_config(plugin.Config, options))
    if isinstance(obj, ELBO):
        if options:
            raise CardError("objective.options: an ELBO object takes no options (give them to its constructor)")
        return _Instance(_config(SVIObjective.Config, {}), obj)
    if isinstance(obj, type) and issubclass(obj, UpdateRule):
        return _Rule(ObjectiveConfig(name="custom"), obj, options)
    raise CardError(
        f"{label}: expected an Objective plugin, a Pyro ELBO (class or object) or an UpdateRule class, "
        f"got {type(obj).__name__}"
    )


def _config(section: type[ObjectiveConfig], options: dict[str, Any], name: str = "custom") -> ObjectiveConfig:
    try:
        return section.model_validate({**options, "name": name})
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise CardError(f"objective.options.{where}: {first_line(ValueError(e['msg']))}") from None
