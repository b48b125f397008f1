"""The objective plugin: what every objective declares, and the registry of objective names.

An objective is a class that registers its own names (``names``), has its own card section
(``Config``, tagged by ``name``), states what it needs of the model and the guide
(:meth:`Objective.refusal`, asked of their declared capabilities and :class:`GuideTraits`),
fills its ``"auto"`` options from them (:meth:`Objective.resolve`) and builds its update rule
(:meth:`Objective.rule`). The facade asks these declarations and never compares a name.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from .._registry import Plugin, Registry
from ..errors import IncompatibleError
from ..guides.base import GuideTraits
from ..schema import Section


class ObjectiveConfig(Section):
    """Base of every objective's card section; ``name`` names the objective."""

    name: str


#: objective names -> their plugin classes
OBJECTIVES: Registry[type[Objective]] = Registry("objective")


class Objective(Plugin, abc.ABC):
    """Base of the objective plugins. A subclass lists its names in ``names`` (registered on
    definition) and declares its ``Config``; an objective named by import path
    (``objective.target``) subclasses it without ``names``."""

    registry, section, tag = OBJECTIVES, "objective", "name"
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    config: ObjectiveConfig

    def cannot(self, model: Any, why: str) -> str:
        """The common refusal: ``objective.name = 'x' cannot train family 'f': why``."""
        return f"{self.label} cannot train family {model.config.family!r}: {why}"

    @abc.abstractmethod
    def refusal(self, model: Any, guide: GuideTraits) -> str | None:
        """Why this objective cannot train ``model`` with a guide offering ``guide`` (one line
        naming the missing capability and why), or None."""

    def resolve(self, model: Any) -> ObjectiveConfig:
        """The config with every ``"auto"`` option decided for ``model`` (default: as given)."""
        return self.config

    def check(self, model: Any, guide: GuideTraits) -> None:
        """Raise IncompatibleError when :meth:`refusal` gives a reason."""
        why = self.refusal(model, guide)
        if why is not None:
            raise IncompatibleError(why)

    def check_guide(self, model: Any, guide: Any, args: tuple = (), kwargs: dict | None = None) -> None:
        """Checks that need the built guide and a batch (e.g. by tracing it once); default none."""

    @abc.abstractmethod
    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> Any:
        """The :class:`~pplvm.training.rules.UpdateRule` that trains ``model`` and ``guide`` as
        the ``card`` says (``held_out``: whether the guide can score held-out data)."""

    def globals_label(self) -> str:
        """What the fitted global latents are, for summaries."""
        return "posterior of the global latents (guide draws)"
