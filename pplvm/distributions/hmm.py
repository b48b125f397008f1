"""Hidden Markov chains with the states summed out exactly, in parallel over time.

:class:`HiddenMarkovChain` evaluates ``log p(x)``, the posterior marginals, expected
transition counts and the Viterbi path by the chunked algorithm of :mod:`._hmm_chunked`
(:func:`log_partition`, :func:`chain_posterior`, :func:`viterbi`); :func:`chain_score`, the
log-depth tree (:mod:`._hmm_tree`), is the reference it is tested against (and what it
reduces to with chunks of one step). All of them are importable from here.

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

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints

from ._hmm_chunked import CHUNK, chain_posterior, default_chunk, log_partition, viterbi  # noqa: F401  (re-exported)
from ._hmm_tree import Semiring, chain_score  # noqa: F401  (re-exported)
from .collapsed import CollapsedLatents


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

    def __init__(
        self,
        initial_logits: torch.Tensor,
        transition_logits: torch.Tensor,
        observation_dist: dist.TorchDistribution,
        duration: int,
        lengths: torch.Tensor | None = None,
        latent: str = "states",
        validate_args=None,
    ):
        self.initial_logits = initial_logits - initial_logits.logsumexp(-1, keepdim=True)
        self.transition_logits = transition_logits - transition_logits.logsumexp(-1, keepdim=True)
        self.observation_dist = observation_dist
        self.duration, self.lengths, self.latent = int(duration), lengths, latent
        batch_shape = torch.broadcast_shapes(
            initial_logits.shape[:-1],
            transition_logits.shape[:-2],
            observation_dist.batch_shape[:-2],
            lengths.shape if lengths is not None else (),
        )
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
        return log_partition(self.initial_logits, self.transition_logits, self.emission_logits(value), self.mask)

    @torch.no_grad()
    def posterior(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact posterior of the states given ``value`` (see :func:`chain_posterior`):
        ``log_prob`` ``(*b)``, ``initial`` ``(*b, K)``, ``states`` ``(*b, T, K)`` (zero on
        padding) and expected transition counts ``transitions`` ``(*b, K, K)``."""
        return chain_posterior(self.initial_logits, self.transition_logits, self.emission_logits(value), self.mask)

    def latent_marginals(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """``p(z_t = k | x)``, ``(*b, T, K)``; zero beyond each sequence's length."""
        return {self.latent: self.posterior(value)["states"]}

    @torch.no_grad()
    def latent_map(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Viterbi path ``argmax_z p(z | x)``, ``(*b, T)`` long; -1 beyond each length."""
        path = viterbi(self.initial_logits, self.transition_logits, self.emission_logits(value), self.mask)
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
