"""Model families. Each registers its class under the name a card's ``model.family`` uses."""

from __future__ import annotations

from .._registry import Registry
from .base import FamilyConfig, LatentVariableModel
from .gmm import GaussianMixture, GMMConfig
from .linear_gaussian import FactorAnalysis, FAConfig, LinearGaussian, PPCA, PPCAConfig

FAMILIES: Registry[type[LatentVariableModel]] = Registry("model family")
FAMILIES.register("gmm")(GaussianMixture)
FAMILIES.register("ppca")(PPCA)
FAMILIES.register("fa")(FactorAnalysis)

__all__ = ["FAMILIES", "FAConfig", "FactorAnalysis", "FamilyConfig", "GMMConfig", "GaussianMixture",
           "LatentVariableModel", "LinearGaussian", "PPCA", "PPCAConfig"]
