"""The log-depth tree over time (:func:`chain_score`): the reference the chunked algorithm of
:mod:`._hmm_chunked` is tested against, and what it reduces to with chunks of one step
(re-exported from :mod:`.hmm`, whose docstring derives it)."""

from __future__ import annotations

from typing import Callable, Literal

import torch

Semiring = Literal["sum", "max"]


def _logmatmulmax(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Max-plus product ``max_m x[..., i, m] + y[..., m, j]``; its gradient picks one argmax."""
    return (x.unsqueeze(-1) + y.unsqueeze(-3)).max(-2).values


def _pairwise(factors: torch.Tensor, matmul: Callable) -> torch.Tensor:
    """One level of the tree: ``(*b, T, K, K)`` -> ``(*b, ⌈T/2⌉, K, K)``, neighbours multiplied
    in one batched call (an odd last factor is carried up as it is)."""
    time = factors.size(-3)
    even = time // 2 * 2
    pairs = factors[..., :even, :, :].unflatten(-3, (even // 2, 2))
    product = matmul(pairs[..., 0, :, :], pairs[..., 1, :, :])
    if time > even:
        product = torch.cat([product, factors[..., even:, :, :]], dim=-3)
    return product


def _max_product(factors: torch.Tensor) -> torch.Tensor:
    """Max-plus product ``M_0 ⊗ … ⊗ M_{T-1}`` of log-factors ``(*b, T, K, K)`` -> ``(*b, K, K)``."""
    while factors.size(-3) > 1:
        factors = _pairwise(factors, _logmatmulmax)
    return factors.squeeze(-3)


def _scaled_product(factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of non-negative factors ``(*b, T, K, K)`` in linear space, each partial product
    divided by its largest entry so nothing under- or overflows (the scaled forward algorithm,
    in parallel form). Returns ``(P (*b, K, K), log c (*b))`` with the product ``= c · P``.
    The scales are constants to autograd: ``log(c · P)`` does not depend on them."""
    tiny = torch.finfo(factors.dtype).tiny
    log_scale = factors.new_zeros(factors.shape[:-3])
    while factors.size(-3) > 1:
        factors = _pairwise(factors, torch.matmul)
        scale = factors.detach().amax((-2, -1), keepdim=True).clamp_min(tiny)
        factors = factors / scale
        log_scale = log_scale + scale.log().flatten(-3).sum(-1)
    return factors.squeeze(-3), log_scale


def chain_score(
    initial: torch.Tensor,
    transition: torch.Tensor,
    emission: torch.Tensor,
    mask: torch.Tensor,
    semiring: Semiring = "sum",
) -> torch.Tensor:
    """Log partition (``"sum"``) or Viterbi score (``"max"``) of hidden Markov chains.

    :param initial: ``(*b, K)`` log p(z_0).
    :param transition: ``(*b, K, K)`` log p(z_t = j | z_{t-1} = i).
    :param emission: ``(*b, T, K)`` log p(x_t | z_t = k).
    :param mask: ``(*b, T)`` bool, True on observed steps; ``mask[..., 0]`` must be True.
    :returns: ``(*b)`` (the broadcast batch shape).

    ``"sum"`` runs in linear space on ``exp(e_t - max_k e_t)`` with rescaled partial products
    (two exps in all, none per tree level); ``"max"`` runs in log space.
    """
    time, k = emission.size(-2), emission.size(-1)
    if semiring == "max":
        alpha = initial + emission[..., 0, :]  # (*b, K)
        if time > 1:
            eye = torch.full((k, k), -torch.inf, dtype=emission.dtype, device=emission.device).fill_diagonal_(0.0)
            steps = transition.unsqueeze(-3) + emission[..., 1:, None, :]  # (*b, T-1, K, K)
            product = _max_product(torch.where(mask[..., 1:, None, None], steps, eye))
            alpha = (alpha.unsqueeze(-1) + product).max(-2).values
        return alpha.max(-1).values
    shift = emission.detach().amax(-1, keepdim=True)  # (*b, T, 1): a constant per step
    likelihood = (emission - shift).exp()  # (*b, T, K), largest entry 1 per step
    log_scale = (shift.squeeze(-1) * mask).sum(-1)
    alpha = initial.exp() * likelihood[..., 0, :]  # (*b, K)
    if time > 1:
        eye = torch.eye(k, dtype=emission.dtype, device=emission.device)
        steps = transition.exp().unsqueeze(-3) * likelihood[..., 1:, None, :]  # (*b, T-1, K, K)
        product, log_c = _scaled_product(torch.where(mask[..., 1:, None, None], steps, eye))
        alpha = (alpha.unsqueeze(-2) @ product).squeeze(-2)
        log_scale = log_scale + log_c
    return alpha.sum(-1).clamp_min(torch.finfo(emission.dtype).tiny).log() + log_scale
