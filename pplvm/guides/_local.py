"""What the guides of continuous local latents share: their card section (``globals``: the
autoguide of the global latents they hold) and their needs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..families.base import ContinuousLatentModel
from .autoguides import continuous_locals, sites_text
from .base import InitScale


class LocalConfig(InitScale):
    globals: str = Field(
        "AutoNormal", description="the autoguide of the global latents (any Pyro autoguide by class name)"
    )
    globals_options: dict[str, Any] = Field({}, description="keyword arguments of the globals' autoguide")


def local_refusal(model: Any, what: str) -> str | None:
    """Why a guide of one continuous local latent with an encoder (``what``) cannot serve ``model``."""
    if isinstance(model, ContinuousLatentModel):
        why = model.amortization()
        return f"{what} cannot serve this model's local latent: {why}" if why else None
    local = continuous_locals(model)
    if len(local) > 1:
        return f"{what} serves one continuous local site; this model has {len(local)} ({sites_text(local)})"
    if local:
        return (
            f"{what} serves a continuous local latent through an encoder, and this family builds none for {local[0]!r}"
        )
    why = " (its local latents are summed out by enumeration)" if model.enumerated else ""
    return f"{what} serves a continuous local latent, and this model has none{why}"
