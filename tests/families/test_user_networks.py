"""A user's decoder or encoder by import path (``model.decoder_target`` / ``encoder_target``):
networks equal to the built-in MLPs (weights copied) give the built-in family's ELBO and
log-likelihood estimate under the same seed; a Bayesian decoder (``PyroSample`` weights, a
linear-Gaussian one so that everything has a closed form) has the closed-form ELBO and marginal
``log p(x | W)``; networks that break the contract are refused in one line naming the field."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pplvm
from pplvm.errors import CardError
from pplvm.families import FAMILIES
from pplvm.guides import make_guide

D, L, N = 6, 2, 8


def build(family: str, dim: int, x, **config):
    cfg = FAMILIES[family].Config(family=family, latent_dim=L, **config)
    model = FAMILIES[family](cfg, dim)
    return model, make_guide(model, "amortized", x)


def binary(n: int, d: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


@pytest.mark.parametrize("family", ["vae", "cvae"])
def test_user_networks_equal_to_the_builtin_mlps_give_the_same_elbo(family):
    """The decoder and encoder of tests/user_networks.py are the built-in one-hidden-layer MLPs
    written independently; with the built-in model's weights copied in, one-particle ELBOs
    under the same seed and the importance-sampled log-likelihood agree to float rounding."""
    x = binary(N, D, 0)
    side = {"classes": 3} if family == "cvae" else {}
    data = pplvm.data.Batch(x, y=torch.arange(N) % 3) if family == "cvae" else x
    builtin, bguide = build(family, D, data, hidden=[16], **side)
    mine, mguide = build(
        family,
        D,
        data,
        hidden=[16],
        decoder_target="user_networks:MLPDecoder",
        encoder_target="user_networks:MLPEncoder",
        **side,
    )
    first, _, last = builtin.decoder.network
    enc_first, _, enc_last = bguide.encoder.encoder.head
    with torch.no_grad():
        for src, dst in (
            (first, mine.decoder.hidden),
            (last, mine.decoder.out),
            (enc_first, mguide.encoder.encoder.hidden),
            (enc_last, mguide.encoder.encoder.out),
        ):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    losses = []
    for model, guide in ((builtin, bguide), (mine, mguide)):
        pyro.set_rng_seed(3)
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        losses.append(torch.tensor([elbo.loss(model, guide, data), elbo.loss(model, guide, data, num_data=40)]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)  # float32 sums of ~50 nats
    ll = [m.log_likelihood(data, {}, proposal=g, num_samples=50) for m, g in ((builtin, bguide), (mine, mguide))]
    torch.testing.assert_close(ll[0], ll[1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ a Bayesian (linear) decoder
SIGMA = 0.5


def bayes(x, **config):
    model, guide = build(
        "vae", x.shape[1], x, decoder_target="user_networks:BayesLinearDecoder", likelihood="gaussian", **config
    )
    with pyro.poutine.block():
        guide(x)  # the autoguide over W sets itself up on its first call
    return model, guide


def closed_form_elbo(x, m_z, v_z, m_w, s_w, mu, num_data) -> float:
    """ELBO of ``W ~ N(0,1)^{L×D}``, ``z_n ~ N(0, I)``, ``x_n ~ N(z_n W + μ, σ² I)`` under
    ``q(W) = N(m_w, diag s_w²)``, ``q(z_n) = N(m_z, diag v_z)``, the data terms scaled by
    ``num_data / B``::

        E‖r - zW‖² = ‖r‖² - 2 rᵀ(m_z m_w) + Σ_{l,l'} E[z_l z_l'] E[W_l· W_l'·]ᵀ   (r = x - μ)
    """
    x, m_z, v_z, m_w, s_w, mu = (t.double() for t in (x, m_z, v_z, m_w, s_w, mu))
    r = x - mu
    ezz = m_z[:, :, None] * m_z[:, None, :] + torch.diag_embed(v_z)  # (B, L, L)
    eww = m_w @ m_w.T + torch.diag((s_w**2).sum(1))  # (L, L): Σ_d E[W_ld W_l'd]
    sq = (r**2).sum(1) - 2 * (r * (m_z @ m_w)).sum(1) + (ezz * eww).sum((1, 2))
    expected_ll = -0.5 * x.shape[1] * math.log(2 * math.pi * SIGMA**2) - sq / (2 * SIGMA**2)
    kl_z = 0.5 * (v_z + m_z**2 - 1 - v_z.log()).sum(1)
    kl_w = 0.5 * (s_w**2 + m_w**2 - 1 - 2 * s_w.log()).sum()
    return float(num_data / len(x) * (expected_ll - kl_z).sum() - kl_w)


def test_bayesian_decoder_weights_are_global_latents_guided_beside_the_encoder():
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(0))
    model, guide = bayes(x)
    assert model.global_sites == ("decoder.W",) and model.weights == {"decoder.W": (L, 3)}
    assert set(guide.median()) == {"decoder.W"}
    trace = pyro.poutine.trace(model).get_trace(x)
    assert all(f.name != "data" for f in trace.nodes["decoder.W"]["cond_indep_stack"])  # outside the data plate


@pytest.mark.parametrize("num_data", [N, 5 * N])
def test_bayesian_decoder_elbo_is_the_closed_form(num_data):
    """Trace_ELBO over model and guide (AutoNormal over W beside the encoder), averaged over
    20 x 500 vectorised particles, against the closed form; the minibatch case checks that the
    weights' KL is counted once while the data terms are scaled by num_data / B."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, generator=g)
    model, guide = bayes(x)
    with torch.no_grad():
        model.decoder.mu.copy_(torch.randn(3, generator=g))  # a PyroParam: set through its constrained value
    loc, scale = guide.globals_guide._get_loc_and_scale("decoder.W")
    m_z, s_z = guide.encoder(x)
    exact = closed_form_elbo(
        x, m_z.detach(), s_z.detach() ** 2, loc.detach(), scale.detach(), model.decoder.mu.detach(), num_data
    )
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=1)
    vals = torch.tensor([-elbo.loss(model, guide, x, num_data=num_data) for _ in range(20)], dtype=torch.float64)
    se = float(vals.std() / math.sqrt(len(vals)))
    assert abs(float(vals.mean()) - exact) < 4 * se + 1e-3 * abs(exact), (float(vals.mean()), exact, se)


def test_bayesian_decoder_log_likelihood_is_the_marginal_per_draw_of_the_weights():
    """``log p(x | W)`` per posterior draw of W: the importance estimate (prior proposal,
    20,000 draws in a 2-d latent) against N(x | μ, WᵀW + σ² I), for a batch of 3 draws."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 3, generator=g)
    model, _ = bayes(x)
    draws = 0.7 * torch.randn(3, L, 3, generator=g)
    est = model.log_likelihood(x, {"decoder.W": draws}, num_samples=20000)
    exact = torch.stack(
        [
            torch.distributions.MultivariateNormal(torch.zeros(3), w.T @ w + SIGMA**2 * torch.eye(3)).log_prob(x)
            for w in draws
        ]
    )
    assert est.shape == (3, N)
    # with |W| ~ 0.7 the prior proposal's weights are mild: the estimate's standard error is ~0.01
    torch.testing.assert_close(est, exact, atol=0.05, rtol=0)


def test_a_bayesian_decoder_vae_fits_from_a_card(tmp_path):
    """End to end: draws of the decoder's weights, their posterior in arviz, and the held-out
    log-likelihood at the point estimate against the closed form (the run's encoder as proposal)."""
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(3)) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, -1.0], [0.0, 0.0, 0.3]]
    )
    card = {
        "model": {
            "family": "vae",
            "latent_dim": L,
            "decoder_target": "user_networks:BayesLinearDecoder",
            "likelihood": "gaussian",
        },
        "guide": {"kind": "amortized"},
        "objective": {"name": "elbo"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.2},
        "training": {"epochs": 150, "lr": 0.03, "progress": False},
        "evaluation": {"draws": 5, "chains": 2, "samples": 20},
    }
    run = pplvm.fit(card, data=x.numpy(), out=tmp_path / "r")
    assert run.draws(4)["decoder.W"].shape == (4, L, 3)
    idata = run.to_arviz()
    assert idata.posterior["decoder.W"].shape[-2:] == (L, 3)
    w, mu = run.params()["decoder.W"], run.model.decoder.mu.detach()
    rows = x[:10]
    exact = torch.distributions.MultivariateNormal(mu, w.T @ w + SIGMA**2 * torch.eye(3)).log_prob(rows)
    # 200,000 draws from the 2-d prior (at 20,000 the worst row was 0.10 nats off: the posterior
    # is narrow next to the prior; ten times the draws shrink that about threefold)
    est = run.model.log_likelihood(rows, run.params(), num_samples=200_000)
    torch.testing.assert_close(est, exact, atol=0.1, rtol=0)
    assert run.log_likelihood(rows.numpy()).isfinite().all()  # the run's own: its encoder, 20 draws
    with pytest.raises(pplvm.IncompatibleError, match="pass params=run.params"):
        run.model.generate(3)
    assert run.model.generate(3, params=run.params()).shape == (3, 3)
    # the latent tools decode at the weights' point estimate: z W + μ
    from pplvm.workflows.latent import decode, reconstruct

    z = torch.randn(5, L, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode(run, z), z @ w + mu)
    loc = run.guide.local_posterior(rows).base_dist.loc
    torch.testing.assert_close(reconstruct(run, rows.numpy()), loc @ w + mu)


def test_a_gan_generator_from_a_user_decoder_is_its_mean():
    """The gan family reads a user's decoder through its mean: sigmoid of the logits, by hand."""
    model = FAMILIES["gan"](
        FAMILIES["gan"].Config(family="gan", latent_dim=L, decoder_target="user_networks:MLPDecoder"), D
    )
    z = torch.randn(4, 5, L, generator=torch.Generator().manual_seed(0))
    net = model.decoder
    torch.testing.assert_close(model.generator(z), torch.sigmoid(net.out(torch.tanh(net.hidden(z)))))
    assert model.generate(7).shape == (7, D)


# ----------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"decoder_target": "user_networks:Nope"},
            "model.decoder_target = 'user_networks:Nope': module 'user_networks' has no attribute 'Nope'",
        ),
        ({"decoder_target": "no_such_module:X"}, "model.decoder_target = 'no_such_module:X': cannot import module"),
        (
            {"decoder_target": "user_networks:NoEventDecoder"},
            "model.decoder_target: for z of shape (2, 3, 2) expected a distribution with batch shape (2, 3) and event "
            "shape (6,), got batch (2, 3, 6) and event ()",
        ),
        (
            {"decoder_target": "user_networks:TensorDecoder"},
            "model.decoder_target: expected the decoder to return a torch/Pyro Distribution, got Tensor",
        ),
        (
            {"decoder_target": "user_networks:no_arguments"},
            "model.decoder_target: calling it on placeholder inputs failed: TypeError: no_arguments() takes 0",
        ),
        (
            {"decoder_target": "user_networks:SampleInForward"},
            "model.decoder_target: the decoder draws site 'W' by pyro.sample in its forward",
        ),
        (
            {"decoder_target": "user_networks:MLPDecoder", "decoder_options": {"dim": 3}},
            "model.decoder_options: dim is passed by pplvm",
        ),
        (
            {"decoder_target": "user_networks:MLPDecoder", "decoder_options": {"width": 3}},
            "model.decoder_options: building MLPDecoder(latent_dim=2, dim=6, **options) failed",
        ),
        (
            {"encoder_target": "user_networks:WideEncoder"},
            "model.encoder_target: for x of shape (3, 6) expected loc and scale of shape (3, 2) each, "
            "got (3, 3) and (3, 3)",
        ),
    ],
)
def test_a_network_that_breaks_the_contract_is_refused_in_one_line(fields, message):
    x = binary(N, D, 0)
    with pytest.raises(CardError) as err:
        build("vae", D, x, **fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_card_level_refusals():
    base = {"data": {"source": "digits", "binarize": "static"}}
    with pytest.raises(CardError, match="set one of model.network .* or model.decoder_target"):
        pplvm.card_from_dict(
            {**base, "model": {"family": "vae", "network": "x", "decoder_target": "user_networks:MLPDecoder"}}
        )
    with pytest.raises(CardError, match="model.decoder_target: the gan family has no guide for latent decoder weights"):
        pplvm.Run.from_card({**base, "model": {"family": "gan", "decoder_target": "user_networks:BayesLinearDecoder"}})
