"""The chunked forward–backward (pplvm.distributions.hmm) against the log-depth tree
(``chain_score``, itself tested against hmmlearn and brute force in tests/families/test_hmm.py)
and against brute-force enumeration, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from pplvm.distributions.hmm import chain_posterior, chain_score, log_partition, viterbi

# float64: both algorithms are exact; they differ only by rounding (~1e-16 per operation,
# summed over T steps of |log p| ~ 10^3..10^4), far inside the 1e-10
TOL = 1e-10


def chains(batch, time, k, seed, shared=True):
    g = torch.Generator().manual_seed(seed)
    b = tuple(batch)
    initial = torch.randn(*b, k, generator=g, dtype=torch.float64).log_softmax(-1)
    transition = torch.randn(*(() if shared else b), k, k, generator=g, dtype=torch.float64).log_softmax(-1)
    emission = 3 * torch.randn(*b, time, k, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, time + 1, b, generator=g)
    lengths.view(-1)[0] = time
    mask = torch.arange(time) < lengths.unsqueeze(-1)
    return initial, transition, emission, mask


def tree_posterior(initial, transition, emission, mask):
    """Marginals and expected transition counts as gradients of the tree's log p(x)."""
    t = transition.expand(initial.shape[:-1] + transition.shape[-2:]).clone().requires_grad_()
    i, e = initial.clone().requires_grad_(), emission.clone().requires_grad_()
    score = chain_score(i, t, e, mask)
    gi, gt, ge = torch.autograd.grad(score.sum(), (i, t, e), allow_unused=True)
    return score.detach(), gi, gt if gt is not None else torch.zeros_like(t), ge


@pytest.mark.parametrize(
    "batch, time, k, shared",
    [
        ((), 1, 3, True),
        ((3,), 2, 4, True),
        ((5,), 37, 3, False),
        ((2, 3), 200, 5, True),
        ((2,), 1000, 8, False),
        ((1,), 5_000, 4, True),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 32, 10_000])
def test_chunked_equals_tree(batch, time, k, shared, chunk):
    initial, transition, emission, mask = chains(batch, time, k, seed=time + k, shared=shared)
    score, g_initial, g_transition, g_emission = tree_posterior(initial, transition, emission, mask)
    assert torch.allclose(
        log_partition(initial, transition, emission, mask, chunk),
        score,
        rtol=0,
        atol=TOL * score.abs().max().clamp_min(1),
    )
    post = chain_posterior(initial, transition, emission, mask, chunk)
    assert torch.allclose(post["states"], g_emission, rtol=0, atol=TOL)
    assert torch.allclose(post["initial"], g_initial, rtol=0, atol=TOL)
    assert torch.allclose(post["transitions"], g_transition, rtol=0, atol=TOL * time)
    # the gradient of the chunked log p(x) is that posterior (its custom backward)
    t = transition.clone().requires_grad_()
    e = emission.clone().requires_grad_()
    ge, gt = torch.autograd.grad(log_partition(initial, t, e, mask, chunk).sum(), (e, t))
    assert torch.allclose(ge, g_emission, rtol=0, atol=TOL)
    assert torch.allclose(
        gt, g_transition if not shared else g_transition.sum(tuple(range(len(batch)))), rtol=0, atol=TOL * time
    )
    # Viterbi: the tree's max-product gradient is the one-hot path
    with torch.enable_grad():
        ee = emission.clone().requires_grad_()
        (onehot,) = torch.autograd.grad(chain_score(initial, transition, ee, mask, "max").sum(), ee)
    expected = onehot.argmax(-1).masked_fill(~mask, -1)
    assert torch.equal(viterbi(initial, transition, emission, mask, chunk).masked_fill(~mask, -1), expected)


def test_chunked_equals_brute_force():
    initial, transition, emission, mask = chains((2,), 6, 3, seed=1)
    mask[:] = True
    k, time = 3, 6
    for b in range(2):
        joint = {}
        for z in itertools.product(range(k), repeat=time):
            s = initial[b, z[0]] + emission[b, 0, z[0]]
            s = s + sum(transition[z[t - 1], z[t]] + emission[b, t, z[t]] for t in range(1, time))
            joint[z] = s
        scores = torch.stack(list(joint.values()))
        log_z = scores.logsumexp(0)
        for chunk in (1, 2, 5):
            assert torch.allclose(log_partition(initial, transition, emission, mask, chunk)[b], log_z, atol=1e-12)
            best = max(joint, key=lambda z: float(joint[z]))
            assert viterbi(initial, transition, emission, mask, chunk)[b].tolist() == list(best)
            probs = (scores - log_z).exp()
            marg = torch.zeros(time, k, dtype=torch.float64)
            for p, z in zip(probs, joint):
                marg[torch.arange(time), torch.tensor(z)] += p
            assert torch.allclose(
                chain_posterior(initial, transition, emission, mask, chunk)["states"][b], marg, atol=1e-12
            )


def test_float32_long_chain_stays_finite():
    """Rescaling every step keeps 10^5 steps of float32 finite and close to float64."""
    initial, transition, emission, mask = chains((1,), 100_000, 8, seed=2)
    mask[:] = True
    exact = log_partition(initial, transition, emission, mask)
    single = log_partition(initial.float(), transition.float(), emission.float(), mask)
    # float32 sums 10^5 terms of size ~3: relative error ~1e-6
    assert torch.isfinite(single).all() and torch.allclose(single.double(), exact, rtol=1e-5)
