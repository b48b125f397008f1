"""Distributions pplvm adds to Pyro's: observation models with collapsed discrete latents."""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .collapsed import CollapsedLatents
from .hmm import HiddenMarkovChain, chain_score

__all__ = ["CollapsedLatents", "HiddenMarkovChain", "chain_score"]
