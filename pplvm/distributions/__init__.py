"""Distributions pplvm adds to Pyro's: observation models with collapsed discrete latents."""

from .collapsed import CollapsedLatents
from .hmm import HiddenMarkovChain, chain_score

__all__ = ["CollapsedLatents", "HiddenMarkovChain", "chain_score"]
