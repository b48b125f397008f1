"""Chunked exact forward–backward: sequential within chunks, parallel across chunks (what
:class:`~pplvm.distributions.HiddenMarkovChain` runs; re-exported from :mod:`.hmm`).

The steps 1..T-1 are cut into C chunks of L steps (L ≈ √T between 8 and 32,
:func:`default_chunk`). Pass 1 multiplies each chunk's transfer matrices M_t = A · diag(l_t),
all chunks at once, one step at a time (L batched (K, K) products, rescaled). For log p(x)
alone the C chunk products are then multiplied as a tree (log2 C levels). For the posterior,
prefix and suffix products of the chunk products (a Hillis–Steele scan, log2 C levels) give the
exact forward message entering every chunk and the backward message leaving it, and pass 2 runs
the vector recursions inside every chunk at once from those messages, the forward one and the
backward one stacked into the same L batched steps (the backward messages as b_t = l_t ∘ β_t,
whose recursion b_{t-1} = (b_t Aᵀ) ∘ l_{t-1} has the forward one's form). That is ~L + log2 C
batched steps (~2L + 2 log2 C with the posterior) over tensors of size C K², instead of log2 T
tree levels over T K²: memory is O(T K) for the messages plus O(C K²) for the products.
Marginals and expected transition counts come from the messages in closed form
(γ_t ∝ (α̂_{t-1} A) ∘ b_t and ξ_t ∝ α̂_{t-1}(i) A(i, j) b_t(j)), and the log partition function is
a torch.autograd.Function whose backward is exactly that, so SVI's gradient is forward–backward
(no graph over time is kept). Measured (one CPU thread, K = 5, T = 2400, a posterior over 3 / 10
restarts' parameters): 9.3 / 15.5 ms before the stacking, 5.3 / 11.5 ms after.
The max-plus semiring in log space gives the Viterbi path as the argmax of max-marginals
δ_t + ψ_t (exact when the best path is unique, as any tie-free argmax).
"""

from __future__ import annotations

import math

import torch

from ._hmm_tree import _scaled_product

#: steps per chunk: measured on CPU (one thread, K = 8 and 32, T = 10^4 and 10^5, and 1000
#: sequences of 100 steps), 16 to 64 steps per chunk are all near the best
CHUNK = 32


def _tracing() -> bool:
    """Whether ``make_fx`` is recording operations (a compiled step): values are unknown."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None


def default_chunk(time: int) -> int:
    """Chunk length L for ``time`` steps: about √T between 8 and :data:`CHUNK` (a short chain's
    time goes in the sequential steps, ~3L + 2 log2(T / L)), the chunks made as even as they go
    (the last one's padding is then under one step per chunk)."""
    steps = max(1, time - 1)
    target = min(CHUNK, max(8, math.isqrt(steps)))
    return math.ceil(steps / math.ceil(steps / target))


def _flatten(initial, transition, emission, mask):
    """Broadcast to one batch dim: ``(B, K)``, ``(Bt, K, K)`` with ``Bt`` in ``{1, B}``,
    ``(B, T, K)``, ``(B, T)``; and the batch shape."""
    time, k = emission.shape[-2:]
    batch = torch.broadcast_shapes(initial.shape[:-1], transition.shape[:-2], emission.shape[:-2], mask.shape[:-1])
    b = math.prod(batch)
    shared = math.prod(transition.shape[:-2]) == 1  # (a plain tuple under provenance tracking)
    trans = transition.reshape(1, k, k) if shared else transition.expand(batch + (k, k)).reshape(b, k, k)
    return (
        initial.expand(batch + (k,)).reshape(b, k),
        trans,
        emission.expand(batch + (time, k)).reshape(b, time, k),
        mask.expand(batch + (time,)).reshape(b, time),
        batch,
    )


def _times(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``v (B, *C, K) @ m`` with ``m`` ``(Bt, K, K)``: one GEMM when the matrix is shared, else
    one batched GEMM of each batch's rows at once (a matmul broadcast over (1, K) rows is slower:
    1.3-1.6x on a whole posterior with K = 5, T = 2400 and 3-10 restarts' transitions)."""
    if m.size(0) == 1:
        return v @ m[0]
    return torch.bmm(v.reshape(v.size(0), -1, v.size(-1)), m).reshape(v.shape[:-1] + m.shape[-1:])


def _mat_times(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``p (B, C, K, K) @ m`` with ``m`` ``(Bt, K, K)`` (every chunk's rows in one batched GEMM)."""
    if m.size(0) == 1:
        return p @ m[0]
    return torch.bmm(p.reshape(p.size(0), -1, p.size(-1)), m).reshape(p.shape[:-1] + m.shape[-1:])


def _times_t(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m @ v`` for vectors ``v (B, *C, K)``: ``(v @ mᵀ)``."""
    return _times(v, m.transpose(-1, -2))


def _pair_times(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x[s] @ m[s]`` for two stacked recursions, ``x`` ``(2, B, C, K)``, ``m`` ``(2, Bt, K, K)``:
    one batched GEMM."""
    two, b, chunks, k = x.shape
    if m.size(1) == 1:
        return torch.bmm(x.reshape(two, b * chunks, k), m[:, 0]).view_as(x)
    return torch.bmm(x.reshape(two * b, chunks, k), m.reshape(two * b, k, k)).view_as(x)


def _chunks(x: torch.Tensor, chunks: int, length: int, fill) -> torch.Tensor:
    """Steps 1..T-1 of ``x`` ``(B, T, *E)`` padded with ``fill`` to ``(B, C, L, *E)``."""
    steps = x[:, 1:]
    pad = chunks * length - steps.size(1)
    if pad:
        steps = torch.cat([steps, steps.new_full((steps.size(0), pad) + steps.shape[2:], fill)], 1)
    return steps.reshape(x.size(0), chunks, length, *x.shape[2:])


def _scan(p: torch.Tensor, log: torch.Tensor | None, reverse: bool = False):
    """Inclusive prefix (``reverse``: suffix) products of chunk products ``p`` ``(B, C, K, K)``
    in ⌈log2 C⌉ levels (Hillis–Steele): ``out_c = p_0 ⋯ p_c`` (``p_c ⋯ p_{C-1}``). Sum semiring
    when ``log`` ``(B, C)`` (the log scales of ``p``) is given: linear space, each product
    rescaled to largest entry 1, logs carried; max-plus in log space (shifted) otherwise."""
    chunks, d = p.size(1), 1
    while d < chunks:
        if log is not None:
            new = p[:, :-d] @ p[:, d:]
            scale = new.flatten(-2).amax(-1)
            new = new / scale[..., None, None]
            new_log = log[:, :-d] + log[:, d:] + scale.log()
            log = torch.cat([new_log, log[:, chunks - d :]] if reverse else [log[:, :d], new_log], 1)
        else:
            new = (p[:, :-d].unsqueeze(-1) + p[:, d:].unsqueeze(-3)).amax(-2)
            new = new - new.flatten(-2).amax(-1)[..., None, None]
        p = torch.cat([new, p[:, chunks - d :]] if reverse else [p[:, :d], new], 1)
        d *= 2
    return p, log


class _SumPass:
    """Scaled forward (and on demand backward) messages of the sum-product semiring."""

    def __init__(self, initial, transition, emission, mask, chunk, messages: bool = True):
        b, time, k = emission.shape
        self.length = length = min(chunk, max(time - 1, 1))
        self.chunks = chunks = max(1, math.ceil((time - 1) / length))
        shift = emission.amax(-1, keepdim=True)  # (B, T, 1): a constant per step
        # 1 beyond each length, where the messages pass unchanged
        lik = torch.where(mask.unsqueeze(-1), (emission - shift).exp(), 1.0)
        self.log_scale = (shift.squeeze(-1) * mask).sum(-1)
        self.initial, self.A = initial.exp(), transition.exp()
        a0 = self.initial * lik[:, 0]
        c0 = a0.sum(-1, keepdim=True)
        self.a0, self.log_c0 = a0 / c0, c0.squeeze(-1).log()
        self.lik = _chunks(lik, chunks, length, 1.0)  # (B, C, L, K): l_t, t = 1 + cL + j
        span = chunks * length  # l_{t-1} for the same t (the last real step's l before the padding)
        self.before = torch.cat([lik, lik.new_ones(b, max(span - time, 0), k)], 1)[:, :span].view_as(self.lik)
        self.mask = _chunks(mask, chunks, length, False)  # (B, C, L)
        # every step observed: the masked selects are skipped but on the last chunk's padding,
        # steps j >= ``self.open`` (a shortcut on the mask's values, so not while a graph is
        # traced: there the masked form is exact for any mask)
        self.open = length - (span - time + 1) if not _tracing() and bool(mask.all()) else 0
        self._products()
        if messages:
            self._entering()
        else:  # log p(x) only: the chunk products multiplied as a tree
            total, log_c = _scaled_product(self.products)
            end = (self.a0.unsqueeze(-2) @ total).sum((-2, -1))
            self.log_partition = self.log_c0 + end.log() + log_c + self.log_products.sum(-1) + self.log_scale

    def _products(self) -> None:
        """``P_c = Π_{t in chunk c} A diag(l_t)`` ``(B, C, K, K)``, each partial product
        rescaled to largest entry 1; ``log_products`` ``(B, C)``: the logs of the scales."""
        b, chunks, length, k = self.lik.shape
        p = torch.eye(k, dtype=self.A.dtype, device=self.A.device).expand(b, chunks, k, k)
        scales = []
        for j in range(length):
            step = _mat_times(p, self.A) * self.lik[:, :, j, None, :]
            p = step if j < self.open else torch.where(self.mask[:, :, j, None, None], step, p)
            scale = p.amax((-2, -1), keepdim=True)
            p = p / scale
            scales.append(scale)
        self.products = p
        self.log_products = torch.cat(scales, -1).log().sum((-2, -1))  # the logs taken once, at the end

    def _entering(self) -> None:
        """Normalised α̂ entering each chunk ``(B, C, K)`` and log p(x), from prefix products of
        the chunk products, and the suffix products ``P_c ⋯ P_{C-1}`` (``suffix``, what the
        backward messages start from): both in one scan of log2 C parallel levels, the suffix
        products as the transposed prefix products of the chunk products reversed and transposed."""
        b = self.products.size(0)
        both = torch.cat([self.products, self.products.flip(1).transpose(-1, -2)])
        scanned, log = _scan(both, torch.cat([self.log_products, self.log_products.flip(1)]))
        prefix, log, self.suffix = scanned[:b], log[:b], scanned[b:].flip(1).transpose(-1, -2)
        ends = (self.a0.unsqueeze(1).unsqueeze(-2) @ prefix).squeeze(-2)  # α̂_0 P_0 ⋯ P_c, (B, C, K)
        norm = ends.sum(-1, keepdim=True)
        ends = ends / norm
        self.entering = torch.cat([self.a0.unsqueeze(1), ends[:, :-1]], 1)
        self.log_partition = self.log_c0 + norm[:, -1, 0].log() + log[:, -1] + self.log_scale

    def _messages(self, leaving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both recursions inside every chunk at once, in one loop of L steps: forward from
        ``entering``, α̂_t ``(B, C, L, K)`` for t = 1 + cL + j (α_t = α_{t-1} A ∘ l_t); backward
        from ``leaving`` (β̂ at each chunk's last step), ``b_t = l_t ∘ β̂_t``, which follows the
        same recursion with Aᵀ (b_{t-1} = b_t Aᵀ ∘ l_{t-1}): ``(B, C, L + 1, K)`` for t = cL + j,
        j = 0..L. Each message normalised to sum 1."""
        b, chunks, length, k = self.lik.shape
        last = self.lik[:, :, -1] * leaving
        x = torch.stack([self.entering, last])  # (2, B, C, K)
        mats = torch.stack([self.A, self.A.transpose(-1, -2)])  # (2, Bt, K, K)
        lik = torch.stack([self.lik, self.before.flip(2)]).movedim(3, 0)  # (L, 2, B, C, K)
        mask = torch.stack([self.mask, self.mask.flip(2)]).movedim(3, 0).unsqueeze(-1)
        out = []
        for j in range(length):
            v = _pair_times(x, mats)
            v = v * lik[j] if length - self.open <= j < self.open else torch.where(mask[j], v, x) * lik[j]
            x = v / v.sum(-1, keepdim=True)
            out.append(x)
        out = torch.stack(out, 3)  # (2, B, C, L, K)
        return out[0], torch.cat([out[1].flip(2), last.unsqueeze(2) / last.sum(-1)[..., None, None]], 2)

    def backward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior ``γ_0 (B, K)``, ``γ_t (B, C, L, K)`` and ``Σ_t ξ_t (B, K, K)``:
        ``γ_t ∝ ξ_t 1 ∝ (α̂_{t-1} A) ∘ b_t`` and ``ξ_t(i, j) ∝ α̂_{t-1}(i) A(i, j) b_t(j)``."""
        b, chunks, length, k = self.lik.shape
        if not hasattr(self, "entering"):
            self._entering()
        ahead = self.suffix[:, 1:].sum(-1)  # P_{c+1} ⋯ P_{C-1} 1, (B, C-1, K)
        ones = torch.ones(b, 1, k, dtype=self.A.dtype, device=self.A.device)
        alphas, messages = self._messages(torch.cat([ahead / ahead.sum(-1, keepdim=True), ones / k], 1))
        gamma0 = self.initial * messages[:, 0, 0]
        gamma0 = gamma0 / gamma0.sum(-1, keepdim=True)
        previous = torch.cat([self.entering.unsqueeze(2), alphas[:, :, :-1]], 2)  # α̂_{t-1}
        ahead = messages[:, :, 1:]  # b_t
        joint = _times(previous, self.A) * ahead
        weight = self.mask / joint.sum(-1).clamp_min(torch.finfo(joint.dtype).tiny)  # (B, C, L)
        gamma = joint * weight.unsqueeze(-1)
        counts = torch.einsum("bcli,bclj->bij", previous * weight.unsqueeze(-1), ahead) * self.A
        return gamma0, gamma, counts


class _LogPartition(torch.autograd.Function):
    """``log p(x)`` of flattened chains; its backward is forward–backward (γ, Σ ξ)."""

    @staticmethod
    def forward(ctx, initial, transition, emission, mask, chunk):
        state = _SumPass(
            initial.detach(), transition.detach(), emission.detach(), mask, chunk, messages=any(ctx.needs_input_grad)
        )
        ctx.state, ctx.time = state, emission.size(1)
        ctx.shared = transition.size(0)
        return state.log_partition

    @staticmethod
    def backward(ctx, grad):
        gamma0, gamma, counts = ctx.state.backward()
        b, k = gamma0.shape
        states = torch.cat([gamma0.unsqueeze(1), gamma.flatten(1, 2)[:, : ctx.time - 1]], 1)
        g = grad.unsqueeze(-1)
        counts = counts * g.unsqueeze(-1)
        if ctx.shared == 1:
            counts = counts.sum(0, keepdim=True)
        return gamma0 * g, counts, states * g.unsqueeze(-1), None, None


def log_partition(
    initial: torch.Tensor,
    transition: torch.Tensor,
    emission: torch.Tensor,
    mask: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """``log p(x)`` of hidden Markov chains by the chunked forward algorithm (see above).

    :param initial: ``(*b, K)`` log p(z_0); :param transition: ``(*b, K, K)`` log p(z_t | z_{t-1});
    :param emission: ``(*b, T, K)`` log p(x_t | z_t); :param mask: ``(*b, T)`` bool, ``mask[..., 0]`` True;
    :param chunk: steps per chunk (default :func:`default_chunk`). Returns ``(*b)``; differentiable
    in ``initial``, ``transition`` and ``emission`` (the gradient is the exact posterior).
    """
    ini, trans, em, m, batch = _flatten(initial, transition, emission, mask)
    out = _LogPartition.apply(ini, trans, em, m, chunk or default_chunk(em.size(1)))
    return out.reshape(batch)


@torch.no_grad()
def chain_posterior(
    initial: torch.Tensor,
    transition: torch.Tensor,
    emission: torch.Tensor,
    mask: torch.Tensor,
    chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """Exact posterior of hidden Markov chains by chunked forward–backward (arguments as
    :func:`log_partition`): ``log_prob`` ``(*b)``, ``initial`` = p(z_0 | x) ``(*b, K)``,
    ``states`` = p(z_t | x) ``(*b, T, K)`` (zero on padding) and ``transitions`` =
    Σ_t p(z_{t-1} = i, z_t = j | x) ``(*b, K, K)`` — an EM E-step's expected counts."""
    ini, trans, em, m, batch = _flatten(initial, transition, emission, mask)
    state = _SumPass(ini, trans, em, m, chunk or default_chunk(em.size(1)))
    gamma0, gamma, counts = state.backward()
    time, k = em.shape[1:]
    states = torch.cat([gamma0.unsqueeze(1), gamma.flatten(1, 2)[:, : time - 1]], 1)
    return {
        "log_prob": state.log_partition.reshape(batch),
        "initial": gamma0.reshape(batch + (k,)),
        "states": states.reshape(batch + (time, k)),
        "transitions": counts.reshape(batch + (k, k)),
    }


def _maxplus(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``max_i v[..., i] + m[i, j]`` for ``v (B, *C, K)``, ``m (Bt, K, K)``."""
    mm = m.reshape(m.size(0), *(1,) * (v.dim() - 2), *m.shape[1:])
    return (v.unsqueeze(-1) + mm).amax(-2)


@torch.no_grad()
def viterbi(
    initial: torch.Tensor,
    transition: torch.Tensor,
    emission: torch.Tensor,
    mask: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """The Viterbi path of hidden Markov chains (arguments as :func:`log_partition`),
    ``(*b, T)`` long, by chunked max-product in log space: the argmax of the max-marginals
    ``δ_t(k) + ψ_t(k)`` (best score of a path through state k at t). Values beyond a
    sequence's length are arbitrary (callers mask them)."""
    ini, trans, em, m, batch = _flatten(initial, transition, emission, mask)
    b, time, k = em.shape
    length = min(chunk or default_chunk(time), max(time - 1, 1))
    chunks = max(1, math.ceil((time - 1) / length))
    e = _chunks(em, chunks, length, 0.0)
    ms = _chunks(m, chunks, length, False)
    d0 = ini + em[:, 0]
    products = None
    if chunks > 1:  # max-plus chunk products, (B, C, K, K)
        eye = torch.full((k, k), -torch.inf, dtype=em.dtype, device=em.device).fill_diagonal_(0.0)
        p = eye.expand(b, chunks, k, k)
        mt = trans[0] if trans.size(0) == 1 else trans.unsqueeze(1)
        for j in range(length):
            step = (p.unsqueeze(-1) + mt.unsqueeze(-3)).amax(-2) + e[:, :, j, None, :]
            p = torch.where(ms[:, :, j, None, None], step, p)
            p = p - p.amax((-2, -1), keepdim=True)
        products = p
    d0 = d0 - d0.amax(-1, keepdim=True)
    if chunks > 1:
        prefix, _ = _scan(products[:, :-1], None)  # max-plus P_0 ⋯ P_c
        ends = (d0[:, None, :, None] + prefix).amax(-2)
        d = torch.cat([d0.unsqueeze(1), ends - ends.amax(-1, keepdim=True)], 1)
    else:
        d = d0.unsqueeze(1)
    deltas = []
    for j in range(length):
        v = torch.where(ms[:, :, j, None], _maxplus(d, trans) + e[:, :, j], d)
        d = v - v.amax(-1, keepdim=True)
        deltas.append(d)
    psi = torch.zeros(b, 1, k, dtype=em.dtype, device=em.device)
    if chunks > 1:
        suffix, _ = _scan(products[:, 1:], None, reverse=True)  # max-plus P_{c+1} ⋯ P_{C-1}
        ahead = suffix.amax(-1)
        psi = torch.cat([ahead - ahead.amax(-1, keepdim=True), psi], 1)
    path = [None] * length
    for j in range(length - 1, -1, -1):
        path[j] = (deltas[j] + psi).argmax(-1)  # (B, C)
        v = torch.where(ms[:, :, j, None], _maxplus(e[:, :, j] + psi, trans.transpose(-1, -2)), psi)
        psi = v - v.amax(-1, keepdim=True)
    first = (d0 + psi[:, 0]).argmax(-1, keepdim=True)
    path = torch.stack(path, 2).flatten(1)[:, : time - 1]
    return torch.cat([first, path], 1).reshape(batch + (time,))
