"""Model families. Each registers its class under the name a card's ``model.family`` uses."""

from __future__ import annotations

from .._registry import Registry
from .base import FamilyConfig, LatentVariableModel
from .gmm import GaussianMixture, GMMConfig
from .hmm import HiddenMarkovModel, HMMConfig
from .linear_gaussian import FactorAnalysis, FAConfig, LinearGaussian, PPCA, PPCAConfig
from .graph import GraphConfig, GraphModel
from .pyro_model import PyroConfig, PyroModel
from .vae import VAE, ConditionalVAE, CVAEConfig, VAEConfig

FAMILIES: Registry[type[LatentVariableModel]] = Registry("model family")
FAMILIES.register("gmm")(GaussianMixture)
FAMILIES.register("hmm")(HiddenMarkovModel)
FAMILIES.register("ppca")(PPCA)
FAMILIES.register("fa")(FactorAnalysis)
FAMILIES.register("vae")(VAE)
FAMILIES.register("cvae")(ConditionalVAE)
FAMILIES.register("pyro")(PyroModel)
FAMILIES.register("graph")(GraphModel)

__all__ = ["FAMILIES", "CVAEConfig", "ConditionalVAE", "FAConfig", "FactorAnalysis", "FamilyConfig", "GMMConfig",
           "GaussianMixture", "HMMConfig", "HiddenMarkovModel", "LatentVariableModel", "LinearGaussian", "PPCA",
           "PPCAConfig", "GraphConfig", "GraphModel", "PyroConfig", "PyroModel", "VAE", "VAEConfig"]
