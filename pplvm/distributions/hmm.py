"""Hidden Markov chains with the states summed out in log space, in parallel over time.

For one sequence of length L with initial log-probabilities ``ι`` (K,), transition
log-probabilities ``τ`` (K, K), rows indexed by the previous state, and emission
log-densities ``e_t(k) = log p(x_t | z_t = k)``::

    log p(x_{0:L-1}) = log Σ_z exp[ ι(z_0) + e_0(z_0) + Σ_{t=1}^{L-1} τ(z_{t-1}, z_t) + e_t(z_t) ]
                     = logsumexp_{i,j} [ α_0(i) + (M_1 ⊗ M_2 ⊗ … ⊗ M_{L-1})(i, j) ]

with ``α_0 = ι + e_0``, ``M_t(i, j) = τ(i, j) + e_t(j)`` and ``⊗`` the log-space matrix
product (logsumexp over the shared index). ``⊗`` is associative, so the product is a tree of
batched products over time, depth ⌈log2 T⌉ (as Pyro's ``DiscreteHMM``), not a loop over t.
It is evaluated in linear space with each partial product rescaled by its largest entry (the
scaled forward algorithm in parallel form), which needs no exp/log per tree level.
Padding: beyond a sequence's length ``M_t`` is the log-identity (0 on the diagonal, -inf
elsewhere), which leaves the product unchanged, so sequences of unequal length share a batch.

Replacing logsumexp by max gives the Viterbi score (max-product). Posterior quantities are
derivatives of the two scores with respect to the emission terms::

    ∂ log p(x) / ∂ e_t(k)            = p(z_t = k | x)        (forward–backward marginals)
    ∂ max_z log p(x, z) / ∂ e_t(k)   = 1[z*_t = k]           (the Viterbi path)

so reverse-mode autograd through the parallel scan *is* the backward pass.
"""

from __future__ import annotations

from typing import Callable, Literal

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints

from .collapsed import CollapsedLatents

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


def chain_score(initial: torch.Tensor, transition: torch.Tensor, emission: torch.Tensor,
                mask: torch.Tensor, semiring: Semiring = "sum") -> torch.Tensor:
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


class HiddenMarkovChain(TorchDistribution, CollapsedLatents):
    """``p(x_{0:T-1} | θ)`` of a hidden Markov chain with its states ``z`` summed out.

    :param initial_logits: ``(*b, K)`` log-probabilities of ``z_0`` (normalised here).
    :param transition_logits: ``(*b, K, K)``; row ``i`` is log p(z_t | z_{t-1} = i) (normalised here).
    :param observation_dist: p(x_t | z_t = k) with event shape ``E`` and a batch shape that
        broadcasts to ``(*b, T, K)`` (Pyro's ``DiscreteHMM`` convention): ``(*b, 1, K)`` for a
        time-homogeneous emission.
    :param duration: T, the padded length.
    :param lengths: ``(*b)`` integers in [1, T], or None when every sequence has length T.
        Values beyond a sequence's length are ignored (they must only be valid inputs of
        ``observation_dist.log_prob``, e.g. zeros).
    :param latent: the name under which :meth:`latent_marginals` / :meth:`latent_map` report z.

    ``batch_shape`` is the broadcast ``(*b)``; ``event_shape`` is ``(T, *E)``.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, initial_logits: torch.Tensor, transition_logits: torch.Tensor,
                 observation_dist: dist.TorchDistribution, duration: int,
                 lengths: torch.Tensor | None = None, latent: str = "states", validate_args=None):
        self.initial_logits = initial_logits - initial_logits.logsumexp(-1, keepdim=True)
        self.transition_logits = transition_logits - transition_logits.logsumexp(-1, keepdim=True)
        self.observation_dist = observation_dist
        self.duration, self.lengths, self.latent = int(duration), lengths, latent
        batch_shape = torch.broadcast_shapes(
            initial_logits.shape[:-1], transition_logits.shape[:-2], observation_dist.batch_shape[:-2],
            lengths.shape if lengths is not None else ())
        super().__init__(batch_shape, (self.duration,) + observation_dist.event_shape, validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=None)
    def support(self):
        return constraints.independent(self.observation_dist.support, 1)

    @property
    def num_states(self) -> int:
        return self.initial_logits.size(-1)

    @property
    def mask(self) -> torch.Tensor:
        """``(*b_lengths, T)`` bool: True on observed steps."""
        steps = torch.arange(self.duration, device=self.initial_logits.device)
        if self.lengths is None:
            return torch.ones(self.duration, dtype=torch.bool, device=steps.device)
        return steps < self.lengths.unsqueeze(-1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HiddenMarkovChain, _instance)
        batch_shape = torch.Size(batch_shape)
        k = self.num_states
        new.initial_logits = self.initial_logits.expand(batch_shape + (k,))
        new.transition_logits = self.transition_logits.expand(batch_shape + (k, k))
        new.observation_dist = self.observation_dist.expand(batch_shape + self.observation_dist.batch_shape[-2:])
        new.lengths = self.lengths.expand(batch_shape) if self.lengths is not None else None
        new.duration, new.latent = self.duration, self.latent
        super(HiddenMarkovChain, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self.__dict__.get("_validate_args")
        return new

    def emission_logits(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(x_t | z_t = k)`` for ``value`` ``(*, T, *E)``: shape ``(*b, T, K)``."""
        event_dim = len(self.observation_dist.event_shape)
        return self.observation_dist.log_prob(value.unsqueeze(-1 - event_dim))  # value (*, T, 1, *E)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return chain_score(self.initial_logits, self.transition_logits, self.emission_logits(value),
                           self.mask, "sum")

    def _score_gradient(self, value: torch.Tensor, semiring: Semiring) -> torch.Tensor:
        with torch.enable_grad():
            emission = self.emission_logits(value).detach().requires_grad_()
            score = chain_score(self.initial_logits.detach(), self.transition_logits.detach(), emission,
                                self.mask, semiring)
            (grad,) = torch.autograd.grad(score.sum(), emission)
        return grad

    def latent_marginals(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """``p(z_t = k | x)``, ``(*b, T, K)``; zero beyond each sequence's length."""
        return {self.latent: self._score_gradient(value, "sum") * self.mask.unsqueeze(-1)}

    def latent_map(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Viterbi path ``argmax_z p(z | x)``, ``(*b, T)`` long; -1 beyond each length."""
        path = self._score_gradient(value, "max").argmax(-1)
        return {self.latent: path.masked_fill(~self.mask, -1)}

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Ancestral sampling, ``(*sample_shape, *b, T, *E)``; zeros beyond each length.
        (A loop over time: generation only, never in training.)"""
        shape = torch.Size(sample_shape) + self.batch_shape
        k, time = self.num_states, self.duration
        # inverse-CDF draws: z_t = #{j : F(j | z_{t-1}) < u_t}, one uniform per step
        u = torch.rand(shape + (time, 1), dtype=self.initial_logits.dtype, device=self.initial_logits.device)
        initial_cdf = self.initial_logits.exp().cumsum(-1).expand(shape + (k,))
        transition_cdf = self.transition_logits.exp().cumsum(-1).expand(shape + (k, k))
        z = (initial_cdf < u[..., 0, :]).sum(-1).clamp_max(k - 1)
        states = [z]
        for t in range(1, time):
            row = transition_cdf.gather(-2, z[..., None, None].expand(shape + (1, k))).squeeze(-2)
            z = (row < u[..., t, :]).sum(-1).clamp_max(k - 1)
            states.append(z)
        z = torch.stack(states, -1)  # (*shape, T)
        event = self.observation_dist.event_shape
        per_state = self.observation_dist.expand(shape + (time, k)).sample()  # (*shape, T, K, *E)
        index = z.reshape(z.shape + (1,) * (1 + len(event))).expand(z.shape + (1,) + event)
        x = per_state.gather(len(shape) + 1, index).squeeze(len(shape) + 1).to(self.initial_logits.dtype)
        mask = self.mask.expand(shape + (time,))
        return x * mask.reshape(mask.shape + (1,) * len(event))
