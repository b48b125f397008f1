"""The base of every card section, below everything that declares one.

Families, data sources and decoders each declare their own card section (a pydantic
``Config``); the card schema in :mod:`pplvm.config` gathers them from the registries. This
module imports no registry, so declaring a section never imports the card.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: seeds are what ``torch.manual_seed`` and numpy accept everywhere: 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Section(BaseModel):
    """Base of every card section: unknown keys, silent type coercion and inf / nan in any
    float field are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
