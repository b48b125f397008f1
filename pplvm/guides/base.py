"""The guide plugin: what every guide declares, and the registry of guide kinds.

A guide is a class that registers its own kinds (``names``), has its own card section
(``Config``, tagged by ``kind``), says whether it can serve a model (:meth:`Guide.refusal`,
asked of the model's declared capabilities), what it offers (:class:`GuideTraits`) and builds
itself (:meth:`Guide.build`). The facade asks these declarations and never tests a guide's type.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from pydantic import Field

from .._registry import Plugin, Registry
from ..errors import IncompatibleError
from ..schema import Section


class GuideConfig(Section):
    """Base of every guide's card section; ``kind`` names the guide."""

    kind: str


class InitScale(GuideConfig):
    init_scale: float = Field(0.1, gt=0, description="initial posterior scale of normal guides")


@dataclasses.dataclass(frozen=True)
class GuideTraits:
    """What a built guide offers the rest of pplvm."""

    #: it forms q(z_n | x_n) over the local latents (``local_posterior``): the importance-sampling
    #: proposal of an estimated likelihood and the answer of ``posterior(x)``
    proposal: bool = False
    #: it holds parameters per training datum: batches carry their rows (``Batch.index``), it
    #: scores no held-out data, and ``training_posterior()`` gives q(z_n) of every training datum
    per_datum: bool = False
    #: its globals' guide is a point estimate (an AutoDelta), which EM writes in place
    point_estimate: bool = False
    #: no guide site is drawn given another's draw (what TraceMeanField_ELBO's analytic KLs need)
    factorised: bool = True
    #: steps of the q(z_n) a per-datum guide fits to rows outside the training data before it
    #: scores them (:meth:`Guide.proposal`); 0: the guide scores every row as it is
    held_out_steps: int = 0

    #: it draws the local latents given x without forming a q(z_n | x_n) to query (a user's own
    #: guide): an importance-sampling proposal all the same
    draws_locals: bool = False

    @property
    def proposes(self) -> bool:
        """Whether its draws of the local latents given x can be an importance-sampling proposal."""
        return self.proposal or self.draws_locals

    @property
    def held_out(self) -> bool:
        """Whether the objective's loss can be computed on held-out data."""
        return not self.per_datum


#: guide kinds -> their plugin classes
GUIDES: Registry[type[Guide]] = Registry("guide kind")


class Guide(Plugin, abc.ABC):
    """Base of the guide plugins. A subclass lists its kinds in ``names`` (registered on
    definition) and declares its ``Config``; a guide named by import path (``guide.target``)
    subclasses it without ``names``."""

    registry, section, tag = GUIDES, "guide", "kind"
    Config: ClassVar[type[GuideConfig]] = GuideConfig
    config: GuideConfig

    @abc.abstractmethod
    def refusal(self, model: Any) -> str | None:
        """Why this guide cannot serve ``model`` (one line, naming the capability it lacks), or None."""

    def traits(self, model: Any) -> GuideTraits:
        """What the guide built for ``model`` offers (default: a guide of the globals only)."""
        return GuideTraits()

    @abc.abstractmethod
    def build(self, model: Any, x: Any, *, generator: torch.Generator, num_data: int | None = None) -> torch.nn.Module:
        """The guide module for ``model``, initialised from the training data ``x``."""

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        """The part of the built ``guide`` that guides the global latents (draws need no data)."""
        return guide

    def proposal(self, guide: torch.nn.Module, model: Any, x: Any, params: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The importance-sampling proposal ``q(z_n | x_n)`` that scores the rows ``x`` (``params``:
        the globals' point estimate), and the rows as that proposal takes them (default: the
        built guide and ``x`` as they are)."""
        return guide, x

    def check(self, model: Any) -> None:
        """Raise IncompatibleError when :meth:`refusal` gives a reason."""
        why = self.refusal(model)
        if why is not None:
            raise IncompatibleError(f"{self.label} is not available for family {model.config.family!r}: {why}")
