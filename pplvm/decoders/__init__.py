"""Decoders ``p_θ(x | z)`` and encoders ``q_φ(z | x)`` for amortized families (VAE, CVAE).

A network (``architecture``: ``mlp`` or ``conv``) and a likelihood head (``likelihood``:
``bernoulli`` or ``gaussian``) are picked independently by the fields of
:class:`NetworkConfig`, which a family's card section inherits::

    decoder = make_decoder(cfg, dim=64)              # z (*S, B, L) -> p(x|z), event (64,)
    encoder = make_encoder(cfg, dim=64)              # x (B, 64) -> (loc, scale), each (B, L)

A user's own decoder or encoder replaces the built-in one by import path
(``model.decoder_target`` / ``model.encoder_target``; the contract is in :mod:`pplvm.decoders.user`),
including a Bayesian decoder whose weights are latent (``PyroSample``).

The default network is the IWAE paper's (Burda et al. 2016, one stochastic layer): two tanh
hidden layers of 200 units and a 50-dimensional latent (784-200-200-50 on MNIST).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

from pydantic import Field, model_validator
from torch import nn

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .._targets import TARGET_PATTERN
from ..errors import CardError
from ..schema import Section
from . import user
from .base import Decoder, Encoder, Likelihood, floored_softplus
from .conv import ConvDecoderNet, ConvTrunk
from .fused import MLP, Backend
from .init import Init, OutputBias, initialize, output_layer
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, GaussianScale
from .mlp import Activation, mlp


class NetworkConfig(Section):
    """Encoder / decoder fields of a card's ``[model]`` section."""

    latent_dim: int = Field(50, ge=1, description="dimension L of the latent z")
    architecture: Literal["mlp", "conv"] = Field(
        "mlp", description="encoder and decoder networks: mlp (fully connected) or conv (convolutional, images)"
    )
    hidden: list[int] = Field(
        [200, 200], description="hidden widths of the MLP layers (encoder; the decoder mirrors them)"
    )
    activation: Activation = Field("tanh", description="nonlinearity of the hidden layers")
    channels: int = Field(16, ge=1, description="conv: channels of the first convolution")
    image_shape: list[int] | None = Field(None, description="conv: [H, W] of the images; default square")
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        "bernoulli", description="the decoder's p(x | z): bernoulli (data in [0, 1]) or gaussian (scale: see scale)"
    )
    scale: GaussianScale = Field("learned", description="gaussian: fixed, learned (per pixel) or amortized")
    fixed_scale: float = Field(0.1, gt=0, description="gaussian: σ when fixed, the start σ when learned")
    min_scale: float = Field(1e-3, gt=0, description="floor of every softplus scale")
    init: Init = Field(
        "glorot",
        description="weights of encoder and decoder: glorot (Glorot & Bengio's uniform, "
        "zero biases: the IWAE paper's) | kaiming (He normal, for relu) | torch (PyTorch's defaults)",
    )
    output_bias: OutputBias = Field(
        "data_mean",
        description="start of the decoder's output bias: data_mean (the "
        "training data's mean pixel: its logit for bernoulli, itself for gaussian; mlp "
        "decoders) | zero",
    )
    encoder_scale: Literal["softplus", "exp"] = Field(
        "softplus",
        description="the encoder's scale from its raw "
        "output: min_scale + softplus (stable) or min_scale + exp "
        "(the IWAE paper's)",
    )
    network: str | None = Field(
        None,
        description="a decoder network registered by name from Python "
        "(pplvm.decoders.register_network, e.g. a CUDA extension) instead of architecture",
    )
    backend: Backend = Field(
        "auto",
        description="decoder kernels: auto (torch: the fastest measured) | "
        "triton | torch | compile (torch.compile); see pplvm.decoders.fused",
    )
    decoder_target: str | None = Field(
        None,
        pattern=TARGET_PATTERN,
        description=(
            "your decoder, 'package.module:name': z (*S, B, L) [, side (B, C)] -> a Distribution with batch (*S, B) "
            "and event (D,); a module class is built with latent_dim, dim [, side_dim] and decoder_options "
            "(pplvm.decoders.user); PyroSample weights are global latents"
        ),
    )
    decoder_options: dict[str, Any] = Field({}, description="keyword arguments of a module class decoder_target")
    encoder_target: str | None = Field(
        None,
        pattern=TARGET_PATTERN,
        description=(
            "your encoder, 'package.module:name': x (B, D) [, side (B, C)] -> (loc, scale), each (B, L); "
            "a module class "
            "is built with latent_dim, dim [, side_dim] and encoder_options"
        ),
    )
    encoder_options: dict[str, Any] = Field({}, description="keyword arguments of a module class encoder_target")

    @model_validator(mode="after")
    def _one_decoder(self):
        if self.decoder_target is not None and self.network is not None:
            raise ValueError("set one of model.network (a registered network) or model.decoder_target (your decoder)")
        return self


def image_shape(cfg: NetworkConfig, dim: int) -> tuple[int, int]:
    """``[H, W]`` of the images (``model.image_shape``, else square), checked against ``dim``."""
    if cfg.image_shape is not None:
        if len(cfg.image_shape) != 2 or min(cfg.image_shape) < 1:
            raise CardError(f"model.image_shape: expected [H, W] of positive sizes, got {cfg.image_shape}")
        h, w = cfg.image_shape
    else:
        h = w = math.isqrt(dim)
    if h * w != dim:
        raise CardError(
            f"model.image_shape: the data has {dim} columns, which is not "
            f"{'a square image' if cfg.image_shape is None else f'{h} x {w}'}; set model.image_shape"
        )
    if cfg.architecture == "conv" and (h % 4 or w % 4):
        raise CardError(f"model.image_shape: the conv architecture needs H and W divisible by 4, got {h} x {w}")
    return h, w


def make_likelihood(cfg: NetworkConfig, dim: int) -> Likelihood:
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood(dim, cfg.backend)
    return GaussianLikelihood(dim, cfg.scale, cfg.fixed_scale, cfg.min_scale, cfg.backend)


#: ``factory(in_features, hidden, out_features, activation) -> nn.Module`` mapping
#: ``(*S, B, in_features)`` to ``(*S, B, out_features)``; see :func:`register_network`
NETWORKS: dict[str, Callable[[int, list[int], int, str], nn.Module]] = {}


def register_network(name: str):
    """Decorator: make a decoder network factory available to cards as ``model.network = name``
    (e.g. a module around a user's CUDA extension, ``examples/cuda_decoder``). The factory gets
    ``(in_features, hidden, out_features, activation)`` with ``hidden`` the decoder's widths."""

    def register(factory):
        NETWORKS[name] = factory
        return factory

    return register


def make_decoder(cfg: NetworkConfig, dim: int, side_dim: int = 0) -> nn.Module:
    """``p(x | z, side)``: ``z`` ``(*S, B, L)`` and side ``(B, C)`` to a distribution over ``(D,)``:
    a :class:`Decoder`, or the user's ``model.decoder_target`` (see :mod:`pplvm.decoders.user`)."""
    if cfg.decoder_target is not None:
        return user.build(
            cfg.decoder_target,
            cfg.decoder_options,
            "model.decoder_target",
            "decoder",
            latent_dim=cfg.latent_dim,
            dim=dim,
            side_dim=side_dim,
        )
    likelihood = make_likelihood(cfg, dim)
    in_features = cfg.latent_dim + side_dim
    if cfg.network is not None:
        if cfg.network not in NETWORKS:
            known = ", ".join(sorted(NETWORKS)) or "none registered (import the module that registers it first)"
            raise CardError(f"model.network = {cfg.network!r} is not a registered decoder network; known: {known}")
        network = NETWORKS[cfg.network](
            in_features, list(reversed(cfg.hidden)), likelihood.num_outputs * dim, cfg.activation
        )
    elif cfg.architecture == "mlp":
        network = mlp(
            in_features, list(reversed(cfg.hidden)), likelihood.num_outputs * dim, cfg.activation, cfg.backend
        )
    else:
        network = ConvDecoderNet(
            in_features, image_shape(cfg, dim), likelihood.num_outputs, cfg.channels, cfg.activation
        )
    if cfg.network is None:  # a registered network starts as its factory made it
        initialize(network, cfg.init)
    return Decoder(network, likelihood)


def make_encoder(cfg: NetworkConfig, dim: int, side_dim: int = 0) -> nn.Module:
    """``q(z | x, side)``: ``x`` ``(B, D)`` and side ``(B, C)`` to ``(loc, scale)``, each ``(B, L)``:
    an :class:`Encoder`, or the user's ``model.encoder_target`` (see :mod:`pplvm.decoders.user`)."""
    if cfg.encoder_target is not None:
        return user.build(
            cfg.encoder_target,
            cfg.encoder_options,
            "model.encoder_target",
            "encoder",
            latent_dim=cfg.latent_dim,
            dim=dim,
            side_dim=side_dim,
        )
    if cfg.architecture == "mlp":
        trunk, features, hidden = nn.Identity(), dim, cfg.hidden
    else:
        trunk = ConvTrunk(image_shape(cfg, dim), cfg.channels, cfg.activation)
        features, hidden = trunk.out_features, cfg.hidden[-1:]  # conv features, then one hidden layer
    head = mlp(features + side_dim, hidden, 2 * cfg.latent_dim, cfg.activation)
    return Encoder(initialize(trunk, cfg.init), initialize(head, cfg.init), cfg.min_scale, cfg.encoder_scale)


__all__ = [
    "Backend",
    "BernoulliLikelihood",
    "ConvDecoderNet",
    "ConvTrunk",
    "Decoder",
    "Encoder",
    "GaussianLikelihood",
    "Init",
    "Likelihood",
    "MLP",
    "NETWORKS",
    "NetworkConfig",
    "OutputBias",
    "floored_softplus",
    "image_shape",
    "initialize",
    "make_decoder",
    "make_encoder",
    "make_likelihood",
    "mlp",
    "output_layer",
    "register_network",
]
