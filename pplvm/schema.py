"""The base of every card section, below everything that declares one.

Families, data sources and decoders each declare their own card section (a pydantic
``Config``); the card schema in :mod:`pplvm.config` gathers them from the registries. This
module imports no registry, so declaring a section never imports the card.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every card section: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
