"""Encoders of several continuous local sites, each ``q(z | ·) = Normal(loc, scale)`` with
``scale = min_scale + softplus(raw)``: the networks of the amortized guide over a model with
more than one local latent (:mod:`pplvm.guides.sites`).

Rows ``x`` ``(B, D)``: one MLP per site, ``x -> (loc, scale)`` of that site, each ``(B, L)``.

Sequences ``x`` ``(B, T, D)`` with ``lengths`` ``(B,)``: a GRU runs backwards over each sequence
(from its last observed step to its first, as the guide of Pyro's Deep Markov Model does), so
its state ``h_t`` ``(B, T, H)`` summarises ``x_{t:T}``. A site repeated per time step
(``z_1 .. z_T``) gets a combiner, ``q(z_t | z_{t-1}, x_{t:T})``::

    h = (tanh(W z_{t-1}) + h_t) / 2,   loc = A h,   scale = min_scale + softplus(C h)

with a learned ``z_0``; a site per sequence gets an MLP of ``h_1`` (the whole sequence).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import floored_softplus, full_precision
from .mlp import Activation, mlp


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, T, ...)`` with each sequence's first ``lengths[b]`` steps in reverse order
    and its padding left in place (its own inverse)."""
    steps = torch.arange(x.shape[1], device=x.device)
    last = lengths.to(x.device).unsqueeze(-1) - 1  # (B, 1)
    index = torch.where(steps < last + 1, last - steps, steps)  # (B, T)
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class Combiner(nn.Module):
    """``(z_{t-1} (*S, B, L), h_t (B, H)) -> (loc, scale)`` of ``q(z_t | z_{t-1}, x_{t:T})``, each
    ``(*S, B, L)`` (Pyro's DMM ``Combiner``, with the scale floored)."""

    def __init__(self, latent_dim: int, rnn_hidden: int, min_scale: float):
        super().__init__()
        self.z_to_hidden = nn.Linear(latent_dim, rnn_hidden)
        self.to_loc = nn.Linear(rnn_hidden, latent_dim)
        self.to_scale = nn.Linear(rnn_hidden, latent_dim)
        self.z_0 = nn.Parameter(torch.zeros(latent_dim))
        self.min_scale = float(min_scale)

    def forward(self, z_prev: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        combined = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h)
        loc, raw = full_precision(self.to_loc(combined)), full_precision(self.to_scale(combined))
        return loc, floored_softplus(raw, self.min_scale)


class SiteEncoder(nn.Module):
    """Networks of ``q(z | x)`` for several continuous local sites (see the module docstring).

    :param dim: features D of a row (a step, for sequences).
    :param rows: per-datum sites, name -> latent dim L.
    :param steps: per-time-step sites, stem -> latent dim L (sequences only).
    :param sequences: the data are padded sequences ``(B, T, D)`` with lengths.
    :param hidden: hidden widths of the MLPs; ``rnn_hidden``: the GRU's state size.
    """

    def __init__(
        self,
        dim: int,
        rows: dict[str, int],
        steps: dict[str, int],
        *,
        sequences: bool,
        hidden: Sequence[int] = (64,),
        rnn_hidden: int = 64,
        activation: Activation = "tanh",
        min_scale: float = 1e-3,
    ):
        super().__init__()
        if steps and not sequences:
            raise ValueError("sites per time step need sequences")
        self.sequences, self.min_scale = bool(sequences), float(min_scale)
        self.rnn = nn.GRU(dim, rnn_hidden, batch_first=True) if sequences else None
        source = rnn_hidden if sequences else dim
        self.row_heads = nn.ModuleDict({n: mlp(source, hidden, 2 * L, activation) for n, L in rows.items()})
        self.step_heads = nn.ModuleDict({s: Combiner(L, rnn_hidden, min_scale) for s, L in steps.items()})

    def states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``h_t`` ``(B, T, H)``: the backward GRU's state after reading ``x_{len-1} .. x_t``."""
        out, _ = self.rnn(reverse_within(x, lengths))
        return reverse_within(out, lengths)

    def rows(self, source: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(loc, scale)`` ``(B, L)`` of each per-datum site from ``source``: the rows ``(B, D)``,
        or ``h_1`` ``(B, H)`` of sequences."""
        out = {}
        for name, head in self.row_heads.items():
            loc, raw = full_precision(head(source)).chunk(2, dim=-1)
            out[name] = (loc, floored_softplus(raw, self.min_scale))
        return out

    def step(self, stem: str, z_prev: torch.Tensor | None, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the step site ``stem`` given its previous draw (None: the first step)."""
        head = self.step_heads[stem]
        return head(head.z_0.expand(len(h), -1) if z_prev is None else z_prev, h)
