"""Model families. Each registers its class under the name a card's ``model.family`` uses."""

from __future__ import annotations

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .._registry import Registry
from .base import FamilyConfig, LatentVariableModel
from .diffusion import Diffusion, DiffusionConfig
from .flow import FlowConfig, NormalizingFlow
from .gan import GANConfig, GenerativeAdversarialNetwork
from .gmm import GaussianMixture, GMMConfig
from .graph import GraphConfig, GraphModel
from .hmm import HiddenMarkovModel, HMMConfig
from .linear_gaussian import PPCA, FAConfig, FactorAnalysis, LinearGaussian, PPCAConfig
from .pyro_model import PyroConfig, PyroModel
from .vae import VAE, ConditionalVAE, CVAEConfig, VAEConfig
from .vdm import VariationalDiffusion, VDMConfig

FAMILIES: Registry[type[LatentVariableModel]] = Registry("model family")
FAMILIES.register("gmm")(GaussianMixture)
FAMILIES.register("hmm")(HiddenMarkovModel)
FAMILIES.register("ppca")(PPCA)
FAMILIES.register("fa")(FactorAnalysis)
FAMILIES.register("vae")(VAE)
FAMILIES.register("cvae")(ConditionalVAE)
FAMILIES.register("diffusion")(Diffusion)
FAMILIES.register("vdm")(VariationalDiffusion)
FAMILIES.register("flow")(NormalizingFlow)
FAMILIES.register("gan")(GenerativeAdversarialNetwork)
FAMILIES.register("pyro")(PyroModel)
FAMILIES.register("graph")(GraphModel)

__all__ = [
    "FAMILIES",
    "CVAEConfig",
    "ConditionalVAE",
    "Diffusion",
    "DiffusionConfig",
    "FAConfig",
    "FactorAnalysis",
    "FamilyConfig",
    "FlowConfig",
    "GANConfig",
    "GMMConfig",
    "GenerativeAdversarialNetwork",
    "GaussianMixture",
    "GraphConfig",
    "GraphModel",
    "HMMConfig",
    "HiddenMarkovModel",
    "LatentVariableModel",
    "LinearGaussian",
    "NormalizingFlow",
    "PPCA",
    "PPCAConfig",
    "PyroConfig",
    "PyroModel",
    "VAE",
    "VAEConfig",
    "VDMConfig",
    "VariationalDiffusion",
]
