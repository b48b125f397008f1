"""Declarative node graphs (``model.family = "graph"``): the built-in GMM, PPCA, VAE and CVAE
written as graphs give the built-in families' ELBO (same guide, same parameters, same seed), a
mixture of factor analysers from nodes alone has its closed-form marginal, the shipped
Gaussian-mixture VAE's enumerated ELBO and log-likelihood estimate equal brute-force sums over
its components, and malformed graphs are refused naming the node."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal

import pplvm
from pplvm.families import (
    PPCA,
    VAE,
    ConditionalVAE,
    CVAEConfig,
    GaussianMixture,
    GMMConfig,
    GraphModel,
    PPCAConfig,
    VAEConfig,
)
from pplvm.guides import GuideTraits, make_guide
from pplvm.objectives import admitted

GMM_NODES = [
    {"name": "weights", "kind": "global", "prior": "dirichlet", "shape": ["assignment"]},
    {
        "name": "locs",
        "kind": "global",
        "prior": "normal",
        "scale": 10.0,
        "shape": ["assignment", "D"],
        "plate": "components",
    },
    {
        "name": "scales",
        "kind": "global",
        "prior": "lognormal",
        "scale": 2.0,
        "shape": ["assignment", "D"],
        "plate": "components",
    },
    {"name": "assignment", "kind": "categorical", "size": 3, "probs": "weights"},
    {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales", "given": "assignment"},
]
PPCA_NODES = [
    {"name": "weight", "kind": "global", "prior": "normal", "scale": 1.0, "shape": ["D", 2]},
    {"name": "loc", "kind": "param", "shape": ["D"]},
    {"name": "noise", "kind": "param", "shape": ["D"], "init": 1.0, "positive": True},
    {"name": "z", "kind": "gaussian", "dim": 2},
    {"name": "obs", "kind": "observed", "weight": "weight", "input": "z", "mean": "loc", "std": "noise"},
]
VAE_NODES = [
    {"name": "z", "kind": "gaussian", "dim": 4},
    {"name": "obs", "kind": "observed", "distribution": "bernoulli", "decoder": True, "input": "z", "hidden": [16, 32]},
]
#: a conditional VAE: class labels y (a side node, one-hot) feed the decoder ([z, y]) and the encoder
CVAE_NODES = [
    {"name": "label", "kind": "side", "classes": 3},
    {"name": "z", "kind": "gaussian", "dim": 4},
    {
        "name": "obs",
        "kind": "observed",
        "distribution": "bernoulli",
        "decoder": True,
        "input": "z",
        "side": "label",
        "hidden": [16, 32],
    },
]
MFA_NODES = [
    {"name": "pi", "kind": "global", "prior": "dirichlet", "shape": ["c"], "concentration": 5.0},
    {"name": "W", "kind": "param", "shape": ["c", "D", 1], "init": 0.5},
    {"name": "mu", "kind": "param", "shape": ["c", "D"]},
    {"name": "psi", "kind": "param", "shape": ["D"], "init": 1.0, "positive": True},
    {"name": "c", "kind": "categorical", "size": 2, "probs": "pi"},
    {"name": "z", "kind": "gaussian", "dim": 1},
    {"name": "obs", "kind": "observed", "weight": "W", "input": "z", "mean": "mu", "std": "psi", "given": "c"},
]


def graph(nodes, dim):
    card = pplvm.card_from_dict({"model": {"family": "graph", "nodes": nodes}, "data": {"source": "iris"}})
    return GraphModel.from_config(card.model, dim)


def scored(models, guide, x, elbo, **kw):
    """Each model's loss under one guide and one seed (the guide's parameters created first)."""
    with torch.no_grad():
        guide(x)
    out = []
    for model in models:
        with poutine.seed(rng_seed=7):
            out.append(elbo.loss(model, guide, x, **kw))
    return out


@pytest.mark.parametrize("num_data", [None, 160])
def test_gmm_graph_has_the_gmm_family_elbo(num_data):
    builtin, twin = GaussianMixture(GMMConfig(components=3), 2), graph(GMM_NODES, 2)
    assert (twin.global_sites, twin.local_sites) == (("weights", "locs", "scales"), ("assignment",))
    assert [n for n in admitted(twin, GuideTraits()) if n.islower()] == ["enum"]  # pplvm's names
    x = torch.randn(40, 2)
    guide = AutoNormal(poutine.block(builtin, expose=list(builtin.global_sites)))
    a, b = scored([builtin, twin], guide, x, TraceEnum_ELBO(max_plate_nesting=1), num_data=num_data)
    assert b == pytest.approx(a, rel=1e-6)  # float32, same sums in the same order


def test_ppca_graph_has_the_ppca_family_elbo():
    """Bayesian PPCA and its graph at the same μ and σ, one amortized guide, one seed."""
    x = torch.randn(30, 5)
    builtin = PPCA(PPCAConfig(latent_dim=2, prior="normal", init="random"), 5)
    twin = graph(PPCA_NODES, 5)
    with torch.no_grad():
        twin.holder.module.loc = builtin.loc.detach() + 0.3
        builtin.loc.copy_(twin.holder.module.loc)
        twin.holder.module.noise = builtin.noise_scale().detach().clone()
    guide = make_guide(builtin, "amortized", x)
    a, b = scored([builtin, twin], guide, x, Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1))
    assert math.isfinite(a)
    assert b == pytest.approx(a, rel=1e-6)


def test_vae_graph_has_the_vae_family_elbo():
    """A VAE's graph with the VAE's decoder weights: the same ELBO under one encoder guide."""
    x = (torch.rand(25, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    builtin = VAE(VAEConfig(latent_dim=4, hidden=[16, 32]), 64)
    twin = graph(VAE_NODES, 64)
    guide = make_guide(builtin, "amortized", x)  # (the decoder's output bias starts at the data here)
    twin.holder.module.decoders["obs"].load_state_dict(builtin.decoder.state_dict())
    a, b = scored([builtin, twin], guide, x, Trace_ELBO(max_plate_nesting=1))
    assert math.isfinite(a)
    assert b == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize("side", ["labels", "covariates"])
def test_cvae_graph_has_the_cvae_family_elbo(side):
    """A CVAE's graph (labels, or two covariates, as a side node) with the CVAE's decoder
    weights: the same ELBO under one encoder guide, which sees y too; the twin's own encoder
    takes [x, y]."""
    g = torch.Generator().manual_seed(0)
    rows = (torch.rand(25, 64, generator=g) > 0.5).float()
    if side == "labels":
        x = pplvm.data.Batch(rows, y=torch.randint(0, 3, (25,), generator=g))
        builtin = ConditionalVAE(CVAEConfig(family="cvae", latent_dim=4, hidden=[16, 32], classes=3), 64)
        twin = graph(CVAE_NODES, 64)
    else:
        x = pplvm.data.Batch(rows, y=torch.randn(25, 2, generator=g))
        builtin = ConditionalVAE(CVAEConfig(family="cvae", latent_dim=4, hidden=[16, 32], side_dim=2), 64)
        twin = graph([{"name": "label", "kind": "side", "dim": 2}, *CVAE_NODES[1:]], 64)
    assert twin.uses_labels and twin.local_sites == ("z",) and twin.likelihood == "estimate"
    guide = make_guide(builtin, "amortized", x)  # (the decoder's output bias starts at the data here)
    twin.holder.module.decoders["obs"].load_state_dict(builtin.decoder.state_dict())
    a, b = scored([builtin, twin], guide, x, Trace_ELBO(max_plate_nesting=1))
    assert math.isfinite(a)
    assert b == pytest.approx(a, rel=1e-6)  # float32, the same network on the same inputs
    assert make_guide(twin, "amortized", x).encoder(x)[0].shape == (25, 4)


def test_a_graph_with_labels_fits_from_the_card(tmp_path):
    """The CVAE graph trains on the digits' labels from the card alone (two epochs): the loss is
    finite, the held-out estimate too, the run reloads to the same estimate on labelled rows,
    and new digits come class by class."""
    nodes = [{**CVAE_NODES[0], "classes": 10}, CVAE_NODES[1], {**CVAE_NODES[2], "hidden": [32]}]
    card = {
        "model": {"family": "graph", "nodes": nodes},
        "guide": {"kind": "amortized"},
        "objective": {"name": "elbo"},
        "data": {"source": "digits", "binarize": "static"},
        "training": {"epochs": 2, "lr": 0.01, "batch_size": 256, "progress": False},
        "evaluation": {"draws": 2, "chains": 2, "max_rows": 50, "samples": 8},
    }
    run = pplvm.fit(card, out=tmp_path / "run")
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert math.isfinite(run.history[-1]["valid_log_likelihood"])
    assert run.sample(4).shape == (4, 64)
    x = run.transform.inverse(run.dataset.valid)[:20]
    assert x.y is not None
    torch.testing.assert_close(pplvm.load(tmp_path / "run").log_likelihood(x), run.log_likelihood(x))
    assert (tmp_path / "run" / "model.png").is_file()


def test_mixture_of_factor_analysers_from_nodes_has_its_closed_form_marginal():
    """Component c enumerated, factor z importance-sampled (prior proposal, k = 3000, L = 1):
    the estimate equals Σ_c π_c N(x | μ_c, W_c W_cᵀ + diag ψ²) within 0.02 nats per row on
    average (IS error at this k; measured ≈ 1e-3)."""
    model = graph(MFA_NODES, 3)
    gen = torch.Generator().manual_seed(1)
    m = model.holder.module
    with torch.no_grad():
        m.W = torch.randn(2, 3, 1, generator=gen)
        m.mu = 2 * torch.randn(2, 3, generator=gen)
        m.psi = torch.tensor([0.5, 0.8, 1.2])
    pi = torch.tensor([0.3, 0.7])
    x = torch.randn(20, 3, generator=gen) + m.mu[1].detach()

    def prior(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    est = model.log_likelihood(x, {"pi": pi}, proposal=prior, num_samples=3000, seed=0)
    W, mu, psi = m.W.detach(), m.mu.detach(), m.psi.detach()
    cov = W @ W.transpose(-1, -2) + torch.diag(psi.pow(2))
    exact = (pi.log() + dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x.unsqueeze(-2))).logsumexp(-1)
    assert abs(float((est - exact).mean())) < 0.02


def test_a_graph_card_fits_and_reloads(tmp_path):
    card = {
        "model": {"family": "graph", "nodes": GMM_NODES},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 150, "dim": 2, "components": 3},
        "training": {"epochs": 30, "lr": 0.05, "progress": False},
        "evaluation": {"draws": 4, "chains": 2},
    }
    run = pplvm.fit(card, out=tmp_path / "run")
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    x = run.transform.inverse(run.dataset.valid)
    torch.testing.assert_close(pplvm.load(tmp_path / "run").log_likelihood(x), run.log_likelihood(x))
    assert (tmp_path / "run" / "model.png").is_file()


def _without(nodes, name):
    return [n for n in nodes if n["name"] != name]


@pytest.mark.parametrize(
    "nodes, message",
    [
        (_without(GMM_NODES, "weights"), "node 'assignment': probs = 'weights' names no node"),
        (
            [
                *GMM_NODES[:3],
                {"name": "assignment", "kind": "categorical", "size": 3, "probs": "weights"},
                {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales", "given": "locs"},
            ],
            "node 'obs': given = 'locs' must be a categorical or chain or input node",
        ),
        (
            [
                {"name": "a", "kind": "gaussian", "dim": 1, "mean": "b"},
                {"name": "b", "kind": "gaussian", "dim": 1, "mean": "a"},
                {"name": "obs", "kind": "observed", "mean": "a", "std": 1.0},
            ],
            "node 'a' is in a cycle: a -> b -> a",
        ),
        (
            [*GMM_NODES, {"name": "obs2", "kind": "observed", "mean": "locs", "std": 1.0}],
            "expected exactly one node of kind 'observed'",
        ),
        (
            [{"name": "z", "kind": "gaussian"}, {"name": "obs", "kind": "observed", "mean": "z", "std": 1.0}],
            "node 'z' \\(kind 'gaussian'\\) needs dim",
        ),
    ],
)
def test_malformed_graphs_are_refused_naming_the_node(nodes, message):
    with pytest.raises(pplvm.CardError, match=message):
        pplvm.Run.from_card(
            {"model": {"family": "graph", "nodes": nodes}, "objective": {"name": "enum"}, "data": {"source": "iris"}}
        )


@pytest.mark.parametrize(
    "nodes, message",
    [
        (CVAE_NODES[1:2] + [{**CVAE_NODES[2], "side": "label"}], "node 'obs': side = 'label' names no node"),
        (CVAE_NODES[:2] + [{**CVAE_NODES[2], "side": None}], "node 'label': no decoder takes this side node"),
        (
            [{**CVAE_NODES[0], "dim": 2}, *CVAE_NODES[1:]],
            "node 'label' \\(kind 'side'\\) needs classes \\(labels\\) or dim",
        ),
        (
            [*CVAE_NODES[:2], {**CVAE_NODES[2], "decoder": False, "mean": "label"}],
            "node 'obs': mean = 'label' is a side node, which only an observed node's decoder takes",
        ),
    ],
)
def test_malformed_side_nodes_are_refused_naming_the_node(nodes, message):
    with pytest.raises(pplvm.CardError, match=message):
        pplvm.Run.from_card(
            {
                "model": {"family": "graph", "nodes": nodes},
                "guide": {"kind": "amortized"},
                "data": {"source": "digits", "binarize": "static"},
            }
        )


@pytest.mark.parametrize(
    "unlabelled, message",
    [
        (True, "model.nodes: node 'label' \\(kind 'side'\\) needs labels"),
        (False, "labels must lie in 0..2 \\(node 'label': classes = 3\\)"),
    ],
)
def test_side_information_that_does_not_fit_the_node_is_refused(unlabelled, message):
    """No labels with the data (an array passed from Python), or labels the side node does not
    have (the digits have 10 classes)."""
    card = {
        "model": {"family": "graph", "nodes": CVAE_NODES},
        "guide": {"kind": "amortized"},
        "data": {"source": "digits", "binarize": "static"},
    }
    data = (torch.rand(30, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float() if unlabelled else None
    with pytest.raises(pplvm.DataError, match=message):
        pplvm.Run.from_card(card, data=data)


def test_a_discrete_node_under_a_pathwise_objective_is_refused():
    with pytest.raises(pplvm.IncompatibleError, match="objective.name = 'elbo' cannot train.*assignment"):
        pplvm.Run.from_card(
            {
                "model": {"family": "graph", "nodes": GMM_NODES},
                "objective": {"name": "elbo"},
                "data": {"source": "iris"},
            }
        )


def test_a_likelihood_that_does_not_match_the_data_is_refused():
    with pytest.raises(pplvm.DataError, match="node 'obs' has distribution 'bernoulli', which needs 0/1 data"):
        pplvm.Run.from_card(
            {
                "model": {"family": "graph", "nodes": VAE_NODES},
                "guide": {"kind": "amortized"},
                "data": {"source": "iris"},
            }
        )


@pytest.mark.parametrize("name", ["mfa_wine", "gmvae_digits"])
def test_shipped_graph_cards_fit(name, tmp_path):
    """The shipped cards of models no family covers train from the card alone (two epochs
    here): the loss falls and the held-out log-likelihood estimate is finite."""
    from pathlib import Path

    card = pplvm.load_card(
        Path(__file__).parents[2] / "models" / f"{name}.toml",
        [
            "training.epochs=2",
            "training.progress=false",
            "evaluation.samples=8",
            "evaluation.draws=2",
            "evaluation.chains=2",
            "evaluation.max_rows=50",
        ],
    )
    run = pplvm.fit(card, out=tmp_path / name)
    assert run.model.enumerated and run.model.likelihood == "estimate"
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert math.isfinite(run.history[-1]["valid_log_likelihood"])
    assert (tmp_path / name / "model.png").is_file()


# ------------------------------------------------- the shipped Gaussian-mixture VAE (gmvae)
def _gmvae():
    """The model of models/gmvae_digits.toml (10 components over a 4-d z, MLP decoder) with its
    amortized guide, on 6 binary rows; the guide's autoguide set up by one call."""
    from pathlib import Path

    card = pplvm.load_card(Path(__file__).parents[2] / "models" / "gmvae_digits.toml")
    model = GraphModel.from_config(card.model, 64)
    x = (torch.rand(6, 64, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    guide = make_guide(model, "amortized", x)
    with poutine.block():
        guide(x)
    return model, guide, x


def _gmvae_joint(model, theta, z, x) -> torch.Tensor:
    """``log Σ_c π_c N(z_n | centres_c, I) + log p(x_n | z_n)`` per datum, c summed by hand:
    ``(*S, N)`` for ``z`` ``(*S, N, 4)``."""
    log_mix = (theta["pi"].log() + dist.Normal(theta["centres"], 1.0).to_event(1).log_prob(z.unsqueeze(-2))).logsumexp(
        -1
    )
    return log_mix + model.holder.module.decoders["obs"](z, None).log_prob(x)


def test_gmvae_card_enumerated_elbo_is_the_brute_force_sum_over_components():
    """TraceEnum_ELBO sums c out of the model inside each draw of (π, centres, z) from the guide;
    by hand, under the same seed (the same guide draws): log Σ_c p(c | π) p(z | c) p(x | z) per
    datum plus the globals' priors, minus the guide's log-density. Equal to float rounding."""
    model, guide, x = _gmvae()
    pyro.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(5)
    g = poutine.trace(guide).get_trace(x)
    theta = {k: g.nodes[k]["value"] for k in ("pi", "centres")}
    priors = (
        dist.Dirichlet(torch.full((10,), 10.0)).log_prob(theta["pi"])
        + dist.Normal(0.0, 2.0).log_prob(theta["centres"]).sum()
    )
    elbo = _gmvae_joint(model, theta, g.nodes["z"]["value"], x).sum() + priors - g.log_prob_sum()
    assert -loss == pytest.approx(float(elbo.detach()), rel=1e-5)


def test_gmvae_card_log_likelihood_is_the_brute_force_importance_sum():
    """The graph family's estimate (c contracted inside each importance draw of z) against
    ``log (1/k) Σ_i Σ_c p(x, c, z_i) / q(z_i | x)`` by hand with the same draws of z."""
    model, guide, x = _gmvae()
    theta = {k: v.detach() for k, v in guide.median().items()}
    est = model.log_likelihood(x, theta, proposal=guide, num_samples=7, seed=3)
    with poutine.seed(rng_seed=3), pyro.plate("_particles", 7, dim=-2):  # the draws the family makes
        q = poutine.trace(poutine.block(guide, expose=["z"])).get_trace(x).nodes["z"]
    z = q["value"]  # (7, N, 4)
    brute = (_gmvae_joint(model, theta, z, x) - q["fn"].log_prob(z)).logsumexp(0) - math.log(7)
    torch.testing.assert_close(est, brute, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------- chains over time
HMM_NODES = [
    {"name": "initial", "kind": "global", "prior": "dirichlet", "shape": ["states"]},
    {"name": "transition", "kind": "global", "prior": "dirichlet", "shape": ["states", "states"], "plate": "per_state"},
    {
        "name": "locs",
        "kind": "global",
        "prior": "normal",
        "scale": 10.0,
        "shape": ["states", "D"],
        "plate": "per_state",
    },
    {
        "name": "scales",
        "kind": "global",
        "prior": "lognormal",
        "scale": 2.0,
        "shape": ["states", "D"],
        "plate": "per_state",
    },
    {"name": "states", "kind": "chain", "size": 3, "initial": "initial", "transition": "transition"},
    {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales", "given": "states"},
]
#: an HMM whose each state emits from a mixture of M = 2 Gaussians, the component drawn afresh per step
GMM_HMM_NODES = [
    {"name": "initial", "kind": "global", "prior": "dirichlet", "shape": ["states"]},
    {"name": "transition", "kind": "global", "prior": "dirichlet", "shape": ["states", "states"], "plate": "per_state"},
    {"name": "weights", "kind": "global", "prior": "dirichlet", "shape": ["states", "component"], "plate": "per_state"},
    {
        "name": "locs",
        "kind": "global",
        "prior": "normal",
        "scale": 3.0,
        "shape": ["states", "component", "D"],
        "plate": "per_state",
    },
    {
        "name": "scales",
        "kind": "global",
        "prior": "lognormal",
        "scale": 0.5,
        "shape": ["states", "component", "D"],
        "plate": "per_state",
    },
    {"name": "states", "kind": "chain", "size": 2, "initial": "initial", "transition": "transition"},
    {"name": "component", "kind": "categorical", "size": 2, "probs": "weights"},
    {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales", "given": "states", "mixture": "component"},
]


def _sequences(n: int, steps: int, dim: int, seed: int):
    """``n`` padded sequences of 2..``steps`` steps (lengths cycle), Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    lengths = 2 + torch.arange(n) % (steps - 1)
    x = torch.randn(n, steps, dim, generator=g) * (torch.arange(steps) < lengths[:, None])[..., None]
    return pplvm.data.Batch(x, lengths=lengths)


def test_hmm_graph_has_the_hmm_family_likelihood_and_joint():
    """The same parameters (three prior draws at once) give the built-in hmm family's exact
    log p(x_n | θ) per sequence; one draw's log joint (priors + marginal, minibatch-scaled), and
    so the ELBO under any guide, is the family's too. Float32 rounding only."""
    from pplvm.families import HiddenMarkovModel, HMMConfig

    builtin = HiddenMarkovModel(HMMConfig(states=3), 2)
    twin = GraphModel.from_config(
        pplvm.card_from_dict(
            {"model": {"family": "graph", "nodes": HMM_NODES}, "data": {"source": "synthetic_hmm"}}
        ).model,
        2,
    )
    assert twin.sequential and twin.collapsed and twin.likelihood == "exact" and twin.local_sites == ("states",)
    x = twin.prepare(_sequences(6, 5, 2, 0))
    pyro.set_rng_seed(0)
    with pyro.plate("draws", 3, dim=-3):
        prior = poutine.trace(builtin).get_trace(x)
    params = {
        k: prior.nodes[k]["value"].reshape(3, *prior.nodes[k]["value"].shape[-2 if k != "initial" else -1 :])
        for k in builtin.global_sites
    }
    expected = builtin.log_likelihood(x, params)
    got = twin.log_likelihood(x, params)
    assert got.shape == (3, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    one = {k: v[0] for k, v in params.items()}
    joints = [poutine.trace(m.conditioned(one)).get_trace(x, num_data=20).log_prob_sum() for m in (builtin, twin)]
    torch.testing.assert_close(joints[1], joints[0], rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(twin.local_marginals(x, one)["states"], builtin.local_marginals(x, one)["states"])
    torch.testing.assert_close(twin.map_locals(x, one)["states"], builtin.map_locals(x, one)["states"])


def test_gmm_emission_hmm_graph_is_exact_against_brute_force():
    """The states and the per-step mixture components summed out inside the chain: log p(x_n | θ)
    against the sum over all (K·M)^T paths of states and components, for sequences of 1..3 steps."""
    import itertools

    twin = GraphModel.from_config(
        pplvm.card_from_dict(
            {"model": {"family": "graph", "nodes": GMM_HMM_NODES}, "data": {"source": "synthetic_hmm"}}
        ).model,
        2,
    )
    g = torch.Generator().manual_seed(4)
    pi = torch.softmax(torch.randn(2, generator=g), -1)
    A = torch.softmax(torch.randn(2, 2, generator=g), -1)
    w = torch.softmax(torch.randn(2, 2, generator=g), -1)
    mu = 2 * torch.randn(2, 2, 2, generator=g)
    sd = 0.5 + torch.rand(2, 2, 2, generator=g)
    theta = {"initial": pi, "transition": A, "weights": w, "locs": mu, "scales": sd}
    lengths = torch.tensor([1, 2, 3, 3])
    x = torch.randn(4, 3, 2, generator=g) * (torch.arange(3) < lengths[:, None])[..., None]
    got = twin.log_likelihood(pplvm.data.Batch(x, lengths=lengths), theta)
    for n, length in enumerate(lengths.tolist()):
        paths = []
        for states in itertools.product(range(2), repeat=length):
            for comps in itertools.product(range(2), repeat=length):
                lp = pi[states[0]].log()
                for t in range(length):
                    if t:
                        lp = lp + A[states[t - 1], states[t]].log()
                    k, m = states[t], comps[t]
                    lp = lp + w[k, m].log() + dist.Normal(mu[k, m], sd[k, m]).log_prob(x[n, t]).sum()
                paths.append(lp)
        torch.testing.assert_close(got[n], torch.stack(paths).logsumexp(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "nodes, message",
    [
        (
            [*HMM_NODES[:5], {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales"}],
            "node 'obs': in a graph with the chain 'states', the observed node emits given it",
        ),
        ([*HMM_NODES, {"name": "z", "kind": "gaussian", "dim": 1}], "node 'z': a chain graph sums its local latents"),
        ([n for n in HMM_NODES if n["name"] != "transition"], "node 'states': transition = 'transition' names no node"),
        (
            [*GMM_HMM_NODES[:2], {**GMM_HMM_NODES[2], "shape": ["component"], "plate": None}, *GMM_HMM_NODES[3:]],
            "node 'weights': the mixture's probs need shape \\['states', 'component'\\]",
        ),
    ],
)
def test_malformed_chain_graphs_are_refused_naming_the_node(nodes, message):
    with pytest.raises(pplvm.CardError, match=message):
        pplvm.Run.from_card(
            {
                "model": {"family": "graph", "nodes": nodes},
                "objective": {"name": "enum"},
                "data": {"source": "synthetic_hmm"},
            }
        )


def test_a_chain_graph_refuses_a_table_of_rows():
    with pytest.raises(pplvm.DataError, match="node 'states' is a chain over time, so the data are sequences"):
        pplvm.Run.from_card(
            {
                "model": {"family": "graph", "nodes": HMM_NODES},
                "objective": {"name": "enum"},
                "data": {"source": "iris"},
            }
        )


def test_shipped_hmm_gmm_card_fits_and_answers(tmp_path):
    """models/hmm_gmm_synthetic.toml from the card alone (two epochs): the loss is finite, the
    held-out log-likelihood is the chain's exact one at the point estimate, state marginals sum
    to one over the states and the Viterbi path and new sequences have the shapes a user expects."""
    from pathlib import Path

    card = pplvm.load_card(
        Path(__file__).parents[2] / "models" / "hmm_gmm_synthetic.toml",
        ["training.epochs=2", "training.progress=false", "evaluation.draws=2", "evaluation.chains=2", "data.n=20"],
    )
    run = pplvm.fit(card, out=tmp_path / "hmm_gmm")
    assert run.model.likelihood == "exact" and all(math.isfinite(h["train_loss"]) for h in run.history)
    x = run.transform.inverse(run.dataset.valid)
    theta = run.params()
    torch.testing.assert_close(run.log_likelihood(x), run.model.log_likelihood(x, theta))
    marginals = run.posterior(x)["state"]
    assert marginals.shape == (*x.x.shape[:2], 3)
    torch.testing.assert_close(marginals[0, : int(x.lengths[0])].sum(-1), torch.ones(int(x.lengths[0])))
    assert run.map_states(x)["state"].shape == x.x.shape[:2]
    assert run.sample(4).shape == (4, 100, 2)
