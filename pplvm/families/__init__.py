"""Model families. Each registers its class under the name a card's ``model.family`` uses."""

from __future__ import annotations

from .._registry import Registry
from .base import FamilyConfig, LatentVariableModel
from .gmm import GaussianMixture, GMMConfig
from .hmm import HiddenMarkovModel, HMMConfig

FAMILIES: Registry[type[LatentVariableModel]] = Registry("model family")
FAMILIES.register("gmm")(GaussianMixture)
FAMILIES.register("hmm")(HiddenMarkovModel)

__all__ = ["FAMILIES", "FamilyConfig", "GMMConfig", "GaussianMixture", "HMMConfig", "HiddenMarkovModel",
           "LatentVariableModel"]
