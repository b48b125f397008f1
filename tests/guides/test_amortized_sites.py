"""The amortized guide over several continuous local sites (:mod:`pplvm.guides.sites`): on a
two-site linear-Gaussian model and a linear-Gaussian state space model on variable-length
sequences, its importance-sampled log-likelihood matches the closed form (a Gaussian marginal;
a Kalman filter written here); padded steps add nothing; a batch of another length than the
probe's names its steps as the model does; refusals say why in one line."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import pplvm
from pplvm.data import Batch
from pplvm.guides import admitted
from pplvm.guides.sites import AmortizedSites

FIT = {"progress": False, "lr": 0.03, "compile": "off", "eval_every": 100}
EVAL = {"draws": 5, "chains": 2, "max_rows": 50, "samples": 10}


class TwoLayer(PyroModule):
    """``z1 ~ N(0, I_2)``, ``z2 | z1 ~ N(B z1, I_2)``, ``x | z ~ N(W1 z1 + W2 z2, 0.5² I_4)``; fixed
    weights (buffers), so that only the guide is fitted. ``B = 0.8 I`` and ``W = [W1 W2]``
    orthogonal keep the posterior close to a product over coordinates (correlation ≈ 0.15 between
    z1_i and z2_i), which a guide of independent normals can match."""

    def __init__(self):
        super().__init__()
        self.register_buffer("B", 0.8 * torch.eye(2))
        self.register_buffer("W", torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))[0])

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1 @ self.B.T, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.cat([z1, z2], -1) @ self.W.T, 0.5).to_event(1), obs=x)

    def marginal(self, x):
        """``log p(x_n)`` in closed form: ``x ~ N(0, W Σ_z Wᵀ + 0.25 I)``."""
        B, W = self.B.double(), self.W.double()
        cov_z = torch.cat([torch.cat([torch.eye(2), B.T], 1), torch.cat([B, B @ B.T + torch.eye(2)], 1)])
        cov = W @ cov_z @ W.T + 0.25 * torch.eye(4)
        return dist.MultivariateNormal(torch.zeros(4, dtype=torch.float64), cov).log_prob(x.double())

    def draw(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        z1 = torch.randn(n, 2, generator=g)
        z2 = z1 @ self.B.T + torch.randn(n, 2, generator=g)
        return torch.cat([z1, z2], -1) @ self.W.T + 0.5 * torch.randn(n, 4, generator=g)


class StateSpace(PyroModule):
    """A linear-Gaussian state space model written as Pyro's DMM is: ``z_1 ~ N(0, I)``,
    ``z_t ~ N(A z_{t-1}, q² I)``, ``x_t ~ N(C z_t, r² I)``, one site per step ``z_1 .. z_T``
    over the batch's padded length, each masked beyond its sequence's length."""

    def __init__(self, q=0.5, r=0.4):
        super().__init__()
        self.register_buffer("A", torch.tensor([[0.9, 0.2], [-0.2, 0.8]]))
        self.register_buffer("C", torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]]))
        self.q, self.r = q, r

    def forward(self, x, mask):
        z = x.new_zeros(len(x), 2)
        with pyro.plate("sequences", len(x)):
            for t in pyro.markov(range(1, x.shape[1] + 1)):
                scale = 1.0 if t == 1 else self.q
                z = pyro.sample(f"z_{t}", dist.Normal(z @ self.A.T, scale).to_event(1).mask(mask[:, t - 1]))
                obs = dist.Normal(z @ self.C.T, self.r).to_event(1).mask(mask[:, t - 1])
                pyro.sample(f"x_{t}", obs, obs=x[:, t - 1])

    def kalman(self, x, lengths):
        """``log p(x_{1:T_n})`` per sequence by the Kalman filter (float64)."""
        A, C = self.A.double(), self.C.double()
        R = self.r**2 * torch.eye(3, dtype=torch.float64)
        out = []
        for seq, n in zip(x.double(), lengths.tolist()):
            m, P, total = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 0.0
            for t in range(n):
                if t:
                    m, P = A @ m, A @ P @ A.T + self.q**2 * torch.eye(2, dtype=torch.float64)
                S = C @ P @ C.T + R
                total += float(dist.MultivariateNormal(C @ m, S).log_prob(seq[t]))
                K = P @ C.T @ torch.linalg.inv(S)
                m, P = m + K @ (seq[t] - C @ m), P - K @ C @ P
            out.append(total)
        return torch.tensor(out, dtype=torch.float64)

    def draw(self, n, max_length, seed):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, max_length + 1, (n,), generator=g)
        lengths[0] = max_length
        x = torch.zeros(n, max_length, 3)
        z = torch.randn(n, 2, generator=g)
        for t in range(max_length):
            if t:
                z = z @ self.A.T + self.q * torch.randn(n, 2, generator=g)
            x[:, t] = z @ self.C.T + self.r * torch.randn(n, 3, generator=g)
        mask = torch.arange(max_length) < lengths[:, None]
        return Batch(x=x * mask[..., None], lengths=lengths)


def _card(source):
    return {
        "model": {"family": "pyro", "hidden": [32], "rnn_hidden": 32},
        "guide": {"kind": "amortized"},
        "objective": {"name": "elbo"},
        "data": source,
        "training": FIT,
        "evaluation": EVAL,
    }


def test_two_site_estimate_matches_the_gaussian_marginal():
    """Sites z1, z2 (B, 2) each get an encoder. After 40 full-batch steps the IS estimate
    (k = 400) of log p(x_n) is within 0.05 nats per row of the closed form on average (measured
    over training seeds 0-2: 0.001, -0.013, -0.010), at most 0.3 on any row (measured: at most
    0.16), and, being an IWAE bound in expectation, not above it on average beyond IS noise (0.02)."""
    model = TwoLayer()
    x = model.draw(300, seed=1)
    card = _card({"source": "file", "path": "unused.npy", "valid_fraction": 0.2, "standardize": False})
    run = pplvm.fit(card | {"training": {**FIT, "epochs": 40, "lr": 0.05}}, data=x.numpy(), model=model)
    assert isinstance(run.guide, AmortizedSites) and set(run.guide.encoder.row_heads) == {"z1", "z2"}
    assert admitted(run.model)[0] == "amortized"
    held_out = model.draw(40, seed=2)
    est = run.log_likelihood(held_out, samples=400).double()
    gap = est - model.marginal(held_out)
    assert abs(float(gap.mean())) < 0.05 and float(gap.abs().max()) < 0.3
    assert float(gap.mean()) < 0.02
    q = run.posterior(held_out)
    assert q["loc"].shape == (40, 4) and (q["scale"] > 0).all()  # z1 and z2 side by side


@pytest.fixture(scope="module")
def state_space_fit():
    model = StateSpace()
    data = model.draw(60, 5, seed=0)
    card = _card({"source": "nile", "valid_fraction": 0.25, "standardize": False})
    run = pplvm.fit(card | {"training": {**FIT, "epochs": 40, "batch_size": 45, "lr": 0.05}}, data=data, model=model)
    return model, run


def test_rnn_guide_estimate_matches_the_kalman_filter(state_space_fit):
    """Steps z_1 .. z_T get q(z_t | z_{t-1}, x_{t:T}) from a backward GRU. After 40 steps, the IS
    estimate (k = 1000) of each held-out sequence's log-likelihood is within 0.2 nats of the Kalman
    filter's on average (measured over training seeds 1-4: -0.02, -0.01, -0.11, -0.04), not above
    it on average (an IWAE bound in expectation: up to 0.05 of IS noise), and per frame within
    0.05 nats (measured: at most 0.032). A log q left out, or a padded step counted, would be off
    by nats."""
    model, run = state_space_fit
    steps = run.model.layout.steps
    assert [(s.stem, s.offset, s.dim, s.follows, s.masked) for s in steps] == [("z_", 1, 2, "padded", True)]
    assert not run.traits.factorised  # each step's q depends on the previous draw
    held_out = model.draw(30, 5, seed=5)
    exact = model.kalman(held_out.x, held_out.lengths)
    gap = run.log_likelihood(held_out, samples=1000).double() - exact
    assert abs(float(gap.mean())) < 0.2 and float(gap.mean()) < 0.05
    assert abs(float(gap.sum() / held_out.lengths.sum())) < 0.05


def test_padded_steps_add_nothing_and_steps_follow_the_batch(state_space_fit):
    """The family's estimate with the guide as proposal: values written into the padding change
    nothing, and the same sequences padded to 3 steps instead of 6 (fewer steps than the model
    was probed with) give the same numbers (the same draws on the observed steps)."""
    model, run = state_space_fit
    short = model.draw(12, 3, seed=7)
    padded = Batch(x=torch.cat([short.x, torch.zeros(12, 3, 3)], 1), lengths=short.lengths)
    noisy = padded.replace(x=padded.x + 5.0 * (torch.arange(6) >= short.lengths[:, None])[..., None])

    def estimate(batch):
        return run.model.log_likelihood(batch, {}, proposal=run.guide, num_samples=50, seed=0)

    base = estimate(padded)
    torch.testing.assert_close(estimate(noisy), base)
    torch.testing.assert_close(estimate(short), base, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(base).all() and not math.isclose(float(base.std()), 0.0)


def test_refusals_give_the_reason_in_one_line():
    """A guide that serves one site refuses a two-site model, saying so; the amortized guide
    refuses a site it cannot encode, saying which and why."""

    def positive(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, s).to_event(1), obs=x)

    base = {"model": {"family": "pyro"}, "data": {"source": "file", "path": "unused.npy"}}
    two = TwoLayer()
    with pytest.raises(pplvm.IncompatibleError, match=r"2 continuous local sites \(z1, z2\); this guide serves one"):
        pplvm.Run.from_card(base | {"guide": {"kind": "meanfield"}}, two.draw(20, seed=0).numpy(), model=two)
    with pytest.raises(pplvm.CardError) as err:
        pplvm.Run.from_card(base | {"guide": {"kind": "amortized"}}, torch.randn(20, 2).numpy(), model=positive)
    assert "site 's' has support" in str(err.value) and "\n" not in str(err.value)

    class WithGuide(PyroModule):
        def forward(self, x):
            positive(x)

        def guide(self, x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
                pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 1.0).to_event(1))

    with pytest.raises(pplvm.IncompatibleError) as err:
        pplvm.Run.from_card(base | {"guide": {"kind": "amortized"}}, torch.randn(20, 2).numpy(), model=WithGuide())
    assert str(err.value).startswith("guide.kind = 'amortized' is not available for family 'pyro': ")
    assert "site 's' has support" in str(err.value) and str(err.value).endswith("it admits: custom")


def _chain(x, mask, lengths, *, longest=False, masked=True, per_sequence=False):
    """A small sequence model: steps over the padded length or the longest sequence, its
    latent steps masked or not, with or without two latents per sequence (``u1``, ``u2``)."""
    steps = int(lengths.max()) if longest else x.shape[1]
    with pyro.plate("seqs", len(x)):
        if per_sequence:
            u = pyro.sample("u1", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            u = u + pyro.sample("u2", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
        else:
            u = 0.0
        z = x.new_zeros(len(x), 1)
        for t in pyro.markov(range(steps)):
            prior = dist.Normal(0.9 * z + u, 1.0).to_event(1)
            z = pyro.sample(f"z{t}", prior.mask(mask[:, t]) if masked else prior)
            pyro.sample(f"x{t}", dist.Normal(z, 1.0).to_event(1).mask(mask[:, t]), obs=x[:, t])


@pytest.mark.parametrize(
    "options, follows, masked, rows",
    [
        ({}, "padded", True, ()),
        ({"longest": True}, "longest", True, ()),
        ({"masked": False}, "padded", False, ()),
        ({"per_sequence": True}, "padded", True, (("u1", 1), ("u2", 1))),
    ],
)
def test_the_guide_samples_the_sites_the_model_has(options, follows, masked, rows):
    """The layout read off the model (steps over the padded length or the longest sequence,
    masked or not, sites per sequence beside them), and the guide built from it samples exactly
    the model's latent sites on a batch of another padded length than the probe's, masked where
    the model masks them."""
    from functools import partial

    from pplvm.families import PyroConfig, PyroModel
    from pplvm.guides import make_guide

    data = StateSpace().draw(10, 6, seed=3)
    data = Batch(x=data.x[..., :1], lengths=data.lengths)
    fn = partial(_chain, **options)
    model = PyroModel.from_config(PyroConfig(), 1, model=fn, example=data)
    layout = model.local_layout()
    assert [(s.stem, s.offset, s.follows, s.masked) for s in layout.steps] == [("z", 0, follows, masked)]
    assert layout.rows == rows and not layout.refusal
    guide = make_guide(model, "amortized", data)
    batch = Batch(x=torch.cat([data.x[1:5], torch.zeros(4, 2, 1)], 1), lengths=data.lengths[1:5])  # 8 steps
    g = pyro.poutine.trace(guide).get_trace(batch)
    m = pyro.poutine.trace(pyro.poutine.replay(model, trace=g)).get_trace(batch)
    latent = {n for n, s in m.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    assert latent == {n for n, s in g.nodes.items() if s["type"] == "sample"}
    beyond = torch.arange(8)[None] >= batch.lengths[:, None]  # (4, 8)
    g.compute_log_prob()
    for t in range(int(batch.lengths.max()) if options.get("longest") else 8):
        log_q = g.nodes[f"z{t}"]["log_prob"]
        assert bool((log_q[beyond[:, t]] == 0).all()) == masked or not beyond[:, t].any()
