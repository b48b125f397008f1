"""The two halves of an amortized latent-variable model's networks.

A :class:`Decoder` is ``p_θ(x | z)``: a network maps the latent (and any side information)
to raw per-pixel outputs and a :class:`Likelihood` head turns those into a distribution with
event shape ``(D,)``. An :class:`Encoder` is the network of ``q_φ(z | x)``: it maps a datum
(and any side information) to the location and floored-softplus scale of a diagonal normal.

Networks (``mlp``, ``conv``) and likelihood heads (``bernoulli``, ``gaussian``) are chosen
independently; :func:`pplvm.decoders.make_decoder` and :func:`pplvm.decoders.make_encoder`
build them from a card's ``[model]`` section.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from pyro.distributions import Distribution
from pyro.nn import PyroModule
from pyro.nn.module import _PyroModuleMeta

from .init import output_layer


class _AbstractPyroModuleMeta(_PyroModuleMeta, abc.ABCMeta):
    pass


def floored_softplus(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """``floor + softplus(raw)``: a positive scale that can never collapse to zero."""
    return floor + F.softplus(raw)


class Likelihood(PyroModule, metaclass=_AbstractPyroModuleMeta):
    """Head turning raw network outputs ``(*S, B, P * D)`` into ``p(x | z)`` with batch shape
    ``(*S, B)`` and event shape ``(D,)``. ``P = num_outputs`` raw values per pixel, laid out
    channel-first (``raw.unflatten(-1, (P, D))``)."""

    #: raw outputs per pixel the network must produce
    num_outputs: int

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    @abc.abstractmethod
    def forward(self, raw: torch.Tensor) -> Distribution:
        """The distribution of ``x`` given raw outputs ``(..., P * D)``."""

    @abc.abstractmethod
    def raw_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(P * D,)`` under which the head's mean is the mean of ``x`` ``(N, D)``
        (what ``output_bias = "data_mean"`` starts the decoder's output bias at)."""

    @abc.abstractmethod
    def check(self, x: torch.Tensor, name: str) -> None:
        """Raise DataError naming ``name`` if ``x`` ``(N, D)`` (finite, checked by the caller) is
        outside the support."""


class Decoder(PyroModule):
    """``p_θ(x | z) = likelihood(network([z, side]))``.

    :param network: maps ``(*S, B, L + C)`` to ``(*S, B, P * D)``.
    :param likelihood: the head (its ``num_outputs`` is P).
    """

    def __init__(self, network: torch.nn.Module, likelihood: Likelihood):
        super().__init__()
        self.network = network
        self.likelihood = likelihood

    def forward(self, z: torch.Tensor, side: torch.Tensor | None = None) -> Distribution:
        """``z``: ``(*S, B, L)``; ``side``: ``(B, C)`` or None. Returns batch ``(*S, B)``,
        event ``(D,)``."""
        return self.likelihood(full_precision(self.network(_with_side(z, side))))

    @torch.no_grad()
    def start_at_mean(self, x: torch.Tensor) -> bool:
        """Set the output bias so that the decoded mean starts at the mean of ``x`` ``(N, D)``
        (:mod:`pplvm.decoders.init`); False where the network has no per-pixel output bias."""
        layer = output_layer(self.network)
        if layer is None or layer.bias is None or layer.bias.shape != (self.likelihood.num_outputs * x.shape[-1],):
            return False
        layer.bias.copy_(self.likelihood.raw_mean(x).to(layer.bias))
        return True


class Encoder(PyroModule):
    """``x -> (loc, scale)`` of ``q_φ(z | x) = Normal(loc, scale)``, each ``(B, L)``.

    :param trunk: maps ``(B, D)`` to features ``(B, F)`` (identity for an MLP encoder).
    :param head: maps ``(B, F + C)`` to ``(B, 2 L)``: location, then raw scale.
    :param min_scale: floor of the scale.
    :param scale: ``softplus``: ``min_scale + softplus(raw)``; ``exp``: ``min_scale + exp(raw)``
        (the IWAE paper's log-scale output).
    """

    def __init__(self, trunk: torch.nn.Module, head: torch.nn.Module, min_scale: float = 1e-3, scale: str = "softplus"):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.min_scale = float(min_scale)
        if scale not in ("softplus", "exp"):
            raise ValueError(f"scale: expected 'softplus' or 'exp', got {scale!r}")
        self.scale = scale

    def forward(self, x: torch.Tensor, side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = full_precision(self.head(_with_side(self.trunk(x), side))).chunk(2, dim=-1)
        if self.scale == "exp":
            return loc, self.min_scale + raw.exp()
        return loc, floored_softplus(raw, self.min_scale)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if autocast made it half or bfloat16: distributions, log-probabilities
    and the objective's reductions stay in full precision (``training.precision = "bf16"``)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _with_side(h: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
    """``[h, side]`` along the last dim, broadcasting ``side`` over h's leading (particle) dims."""
    if side is None:
        return h
    return torch.cat([h, side.expand(*h.shape[:-1], side.shape[-1])], dim=-1)
