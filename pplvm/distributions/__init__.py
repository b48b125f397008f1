"""Distributions pplvm adds to Pyro's: observation models with collapsed discrete latents, and
independent Bernoulli and Normal features scored by one contraction."""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .bernoulli import BernoulliFeatures
from .collapsed import CollapsedLatents
from .hmm import HiddenMarkovChain, chain_score
from .normal import NormalFeatures

__all__ = ["BernoulliFeatures", "CollapsedLatents", "HiddenMarkovChain", "NormalFeatures", "chain_score"]
