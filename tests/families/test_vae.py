"""VAE and CVAE: the ELBO against closed forms (a linear-Gaussian VAE is probabilistic PCA),
analytic-KL vs Monte-Carlo ELBOs, KL annealing and free bits against hand computations,
class-conditioned generation, input errors, and save / load."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from cases import CASES
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pplvm
from pplvm.data import Batch
from pplvm.errors import CardError, DataError, IncompatibleError
from pplvm.families import FAMILIES
from pplvm.guides import make_guide
from pplvm.objectives import FreeBitsELBO, RenyiBound, ScaleSites, make_objective, objective_config


def build(dim: int, x, family: str = "vae", **config):
    cfg = FAMILIES[family].Config(family=family, **config)
    model = FAMILIES[family](cfg, dim)
    return model, make_guide(model, "amortized", x)


def particles(cls, k: int, **kwargs):
    """An ELBO class with ``k`` vectorised particles over the one data plate."""
    return cls(num_particles=k, vectorize_particles=True, max_plate_nesting=1, **kwargs)


def estimate(elbo, model, guide, x, reps: int) -> tuple[float, float]:
    """Mean and standard error of ``-loss`` over ``reps`` independent calls."""
    vals = torch.tensor([-elbo.loss(model, guide, x) for _ in range(reps)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std() / math.sqrt(reps))


# ------------------------------------------------------- linear-Gaussian VAE = PPCA
D, L, SIGMA, N = 4, 2, 0.5, 40


@pytest.fixture
def ppca():
    """A linear decoder x = W z + b + σ ε with orthogonal columns of W, so the exact posterior
    N(M⁻¹Wᵀ(x - b), σ² M⁻¹), M = WᵀW + σ²I, is diagonal and the encoder can represent it."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g))
    w, b = q * torch.tensor([2.0, 1.0]), torch.randn(D, generator=g)
    x = torch.randn(N, L, generator=g) @ w.T + b + SIGMA * torch.randn(N, D, generator=g)
    model, guide = build(D, x, latent_dim=L, hidden=[], likelihood="gaussian", scale="fixed", fixed_scale=SIGMA)
    (dec,) = model.decoder.network
    (enc,) = guide.encoder.encoder.head
    m = torch.diag(w.T @ w) + SIGMA**2  # diagonal of M
    post_sd = SIGMA / m.sqrt()
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        enc.weight.zero_()
        enc.weight[:L] = w.T / m[:, None]
        enc.bias[:L] = -(w.T @ b) / m
        enc.bias[L:] = torch.log(torch.expm1(post_sd - guide.encoder.encoder.min_scale))
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    return model, guide, x, exact


@pytest.mark.parametrize(
    "elbo", [Trace_ELBO(max_plate_nesting=1), particles(RenyiBound, 5, alpha=0.0)], ids=["elbo", "iwae"]
)
def test_elbo_with_the_exact_posterior_encoder_is_the_ppca_marginal(ppca, elbo):
    """With q = the exact posterior, log p(x, z) - log q(z | x) = log p(x) for every z: each
    one-particle estimate equals the marginal (up to float32 rounding)."""
    model, guide, x, exact = ppca
    torch.testing.assert_close(torch.tensor(-elbo.loss(model, guide, x)), exact.sum(), rtol=1e-5, atol=2e-3)


def test_analytic_kl_elbo_with_the_exact_posterior_encoder_is_the_ppca_marginal(ppca):
    """E_q log p(x | z) - KL(q || p) splits the zero-variance ratio into two terms, so only its
    expectation is the marginal: within 4 standard errors."""
    model, guide, x, exact = ppca
    mean, se = estimate(particles(TraceMeanField_ELBO, 200), model, guide, x, 10)
    assert abs(mean - float(exact.sum())) < 4 * se


def test_importance_sampled_log_likelihood_with_the_exact_posterior_is_exact(ppca):
    model, guide, x, exact = ppca
    ll = model.log_likelihood(x, {}, proposal=guide, num_samples=3)
    torch.testing.assert_close(ll, exact, rtol=1e-5, atol=1e-4)


def test_bounds_are_ordered_below_the_marginal_with_a_worse_encoder(ppca):
    """ELBO < IWAE_k < log p(x) when q is not the posterior (Burda et al. 2016, theorem 1);
    each gap is checked beyond 4 standard errors of the Monte-Carlo estimates."""
    model, guide, x, exact = ppca
    with torch.no_grad():
        guide.encoder.encoder.head[0].bias[:L] += 0.7  # shifted posterior means
    elbo = estimate(particles(Trace_ELBO, 200), model, guide, x, 10)
    iwae = estimate(particles(RenyiBound, 20, alpha=0.0), model, guide, x, 20)
    marginal = float(exact.sum())
    assert elbo[0] + 4 * elbo[1] < iwae[0] - 4 * iwae[1]
    assert iwae[0] + 4 * iwae[1] < marginal
    analytic = estimate(particles(TraceMeanField_ELBO, 200), model, guide, x, 10)
    assert abs(analytic[0] - elbo[0]) < 4 * math.hypot(analytic[1], elbo[1])


def test_meanfield_analytic_kl_elbo_equals_many_particle_trace_elbo():
    """On a random nonlinear Bernoulli VAE: TraceMeanField_ELBO (KL in closed form) and
    Trace_ELBO estimate the same ELBO; they agree within 4 combined standard errors."""
    x = torch.bernoulli(torch.full((30, 16), 0.3))
    model, guide = build(16, x, latent_dim=3, hidden=[12])
    mc = estimate(particles(Trace_ELBO, 500), model, guide, x, 12)
    analytic = estimate(particles(TraceMeanField_ELBO, 500), model, guide, x, 12)
    assert analytic[1] < mc[1]  # the closed-form KL removes variance
    assert abs(analytic[0] - mc[0]) < 4 * math.hypot(analytic[1], mc[1])


def test_renyi_bound_matches_pyro_on_a_full_batch_and_scales_per_datum_on_a_minibatch():
    """On the whole data RenyiBound is Pyro's RenyiELBO; on a minibatch of B out of N its loss is
    N / B times the batch's own bound (Pyro's scales inside the log-mean-exp)."""
    from pyro.infer import RenyiELBO

    x = torch.bernoulli(torch.full((6, 9), 0.5))
    model, guide = build(9, x, latent_dim=2, hidden=[8])
    for alpha in (0.0, 0.5):
        kw = dict(alpha=alpha, num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        pyro.set_rng_seed(7)
        ours = RenyiBound(**kw).loss(model, guide, x)
        pyro.set_rng_seed(7)
        assert ours == pytest.approx(RenyiELBO(**kw).loss(model, guide, x), rel=1e-5)
        pyro.set_rng_seed(7)
        scaled = RenyiBound(**kw).loss(model, guide, x, num_data=60)
        assert scaled == pytest.approx(10 * ours, rel=1e-5)


# ------------------------------------------------------------ collapse controls
@pytest.mark.parametrize(
    "elbo", [particles(Trace_ELBO, 3), particles(TraceMeanField_ELBO, 3)], ids=["elbo", "meanfield"]
)
def test_kl_weight_scales_log_p_z_minus_log_q_z_linearly(elbo):
    """With the same draws, loss(β) = reconstruction + β (log q - log p): linear in β."""
    x = torch.bernoulli(torch.full((10, 9), 0.5))
    model, guide = build(9, x, latent_dim=2, hidden=[8])

    def loss(beta):
        pyro.set_rng_seed(3)
        with ScaleSites(("z",), beta):
            return elbo.loss(model, guide, x)

    pyro.set_rng_seed(3)
    plain = elbo.loss(model, guide, x)
    assert loss(1.0) == pytest.approx(plain, rel=1e-6)
    assert loss(0.5) == pytest.approx((loss(0.0) + loss(1.0)) / 2, rel=1e-5)


def test_free_bits_clamp_each_dimensions_minibatch_kl():
    """λ = 0 is TraceMeanField_ELBO; λ above every KL gives scale (B L λ - Σ KL) more loss, by
    hand, with the minibatch scale N / B, and no KL gradient reaches the encoder."""
    x = torch.bernoulli(torch.full((8, 9), 0.5))
    model, guide = build(9, x, latent_dim=3, hidden=[8])
    num_data = 32  # minibatch of 8 out of 32: every log-prob scaled by 4
    q = guide.local_posterior(x).base_dist
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.loc, q.scale), torch.distributions.Normal(0.0, 1.0)
    )  # (8, 3)
    lam = float(kl.detach().mean(0).max()) + 1.0

    def loss(elbo):
        pyro.set_rng_seed(5)
        return elbo.differentiable_loss(model, guide, x, num_data=num_data)

    mf = loss(TraceMeanField_ELBO(max_plate_nesting=1))
    no_floor = loss(FreeBitsELBO(0.0, ("z",), max_plate_nesting=1))
    assert float(no_floor.detach()) == pytest.approx(float(mf.detach()), rel=1e-6)
    fb = loss(FreeBitsELBO(lam, ("z",), max_plate_nesting=1))
    expected = float(mf.detach()) + (num_data / 8) * float(8 * 3 * lam - kl.detach().sum())
    assert float(fb.detach()) == pytest.approx(expected, rel=1e-5)
    # above the floor the KL is a constant: the encoder's gradient is the reconstruction term's
    grads = torch.autograd.grad(fb, list(guide.parameters()))
    pyro.set_rng_seed(5)
    with ScaleSites(("z",), 0.0):
        recon = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x, num_data=num_data)
    for g, h in zip(grads, torch.autograd.grad(recon, list(guide.parameters()))):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)


def test_kl_warmup_rises_per_step_and_is_logged(quiet):
    card = _case("vae-digits-dynamic-mlp")
    card["objective"] = {"name": "meanfield", "kl_warmup_epochs": 2.0, "free_bits": 0.05}
    run = pplvm.fit(card, overrides=quiet)
    assert [h["kl_weight"] for h in run.history] == [0.5, 1.0, 1.0]


def test_collapse_controls_refuse_what_cannot_work():
    x = torch.bernoulli(torch.full((4, 9), 0.5))
    model, _ = build(9, x, latent_dim=2, hidden=[4])
    # an option of another objective is refused with the card (one line naming who takes it)
    with pytest.raises(CardError, match="objective.free_bits: objective.name = 'elbo' takes no such option.*meanfield"):
        objective_config(name="elbo", free_bits=0.5)
    gmm = FAMILIES["gmm"](FAMILIES["gmm"].Config(family="gmm"), 2)
    with pytest.raises(IncompatibleError, match="objective.kl_warmup_epochs .* enumeration"):
        make_objective(gmm, objective_config(name="enum", kl_warmup_epochs=3.0))
    with pytest.raises(IncompatibleError, match="guide.kind = 'meanfield' is not available for family 'vae'"):
        make_guide(model, "meanfield", x)
    with pytest.raises(IncompatibleError, match="objective.name = 'enum' cannot train family 'vae'"):
        make_objective(model, objective_config(name="enum"))


# ------------------------------------------------------------------------ CVAE
def test_cvae_generates_the_class_it_is_given(quiet):
    """Three classes whose means differ: after training, decoder means of 200 prior draws
    generated for class k sit at class k's mean (within 0.35; the classes are >= 3 apart and
    the noise sd is 0.3, so a model ignoring y, or using z for the class, misses by > 1)."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, -3.0], [-3.0, -3.0, 3.0, 0.0]])
    y = torch.arange(300) % 3
    x = means[y] + 0.3 * torch.randn(300, 4, generator=g)
    card = {
        "model": {
            "family": "cvae",
            "classes": 3,
            "latent_dim": 1,
            "hidden": [16],
            "likelihood": "gaussian",
            "fixed_scale": 0.3,
        },
        "guide": {"kind": "amortized"},
        "objective": {"name": "meanfield"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"epochs": 200, "lr": 0.05, "progress": False},
        "evaluation": {"draws": 2, "chains": 1},
    }
    run = pplvm.fit(card, data=Batch(x, y=y), overrides=quiet)
    for k in range(3):
        gen = run.model.generate(y=torch.full((200,), k), generator=torch.Generator().manual_seed(k))
        assert (gen.mean(0) - means[k]).abs().max() < 0.35, (k, gen.mean(0))
    # the prior's samples follow the classes in turn
    assert run.sample(6).shape == (6, 4)


def test_cvae_config_needs_one_kind_of_side_information():
    base = {"family": "cvae", "latent_dim": 2}
    with pytest.raises(CardError, match="exactly one of model.classes"):
        pplvm.card_from_dict({"model": {**base, "classes": 3, "side_dim": 2}, "data": {"source": "digits"}})
    with pytest.raises(CardError, match="exactly one of model.classes"):
        pplvm.card_from_dict({"model": base, "data": {"source": "digits"}})


def test_cvae_on_covariates_conditions_on_them():
    x, y = torch.randn(6, 5), torch.randn(6, 2)
    model, guide = build(5, Batch(x, y=y), family="cvae", side_dim=2, latent_dim=2, hidden=[4], likelihood="gaussian")
    data = model.prepare(Batch(x, y=y))
    assert guide.local_posterior(data).batch_shape == (6,)
    assert model.generate(y=y).shape == (6, 5)
    with pytest.raises(DataError, match=r"data.y: expected 2 columns"):
        model.prepare(Batch(x, y=torch.randn(6, 3)))


# -------------------------------------------------------------------- bad input
def test_input_errors_name_the_field(quiet):
    card = _case("vae-digits-dynamic-mlp")
    card["data"] = {"source": "digits"}  # grey pixels, Bernoulli decoder
    with pytest.raises(DataError, match=r"data \(training split\): a Bernoulli likelihood needs binary data.*binarize"):
        pplvm.Run.from_card(card)
    run = pplvm.Run.from_card(_case("vae-digits-dynamic-mlp"))
    with pytest.raises(DataError, match="x: expected 64 columns"):
        run.log_likelihood(np.zeros((2, 784)))
    bad = np.zeros((2, 64))
    bad[1, 3] = np.nan
    with pytest.raises(DataError, match=r"x: 1 row\(s\) contain NaN"):
        run.log_likelihood(bad)
    cvae = pplvm.Run.from_card(_case("cvae-digits-conv"))
    with pytest.raises(DataError, match="x: family 'cvae' conditions on y"):
        cvae.log_likelihood(np.zeros((2, 64)))
    with pytest.raises(DataError, match=r"x.y: labels must lie in 0..9"):
        cvae.log_likelihood((np.zeros((2, 64)), np.array([3, 10])))
    card = _case("cvae-digits-conv")
    card["data"] = {"source": "synthetic_gmm", "n": 50, "dim": 64}
    card["model"]["architecture"] = "mlp"
    card["model"]["likelihood"] = "gaussian"
    pplvm.Run.from_card(card)  # synthetic_gmm gives labels: fine
    card["data"] = {"source": "file", "path": "x.npy"}
    with pytest.raises(DataError, match="model.family = 'cvae' needs labels"):
        pplvm.Run.from_card(card, data=np.zeros((10, 64)))


# ----------------------------------------------------------------- save / load
@pytest.mark.parametrize(
    "card", [c.values[0] for c in CASES if c.values[0]["model"]["family"] in ("vae", "cvae")], ids=lambda c: c["name"]
)
def test_fit_save_load_round_trip(card, tmp_path):
    run = pplvm.fit(card, out=tmp_path / "run")
    valid = run.dataset.valid[:20]
    back = pplvm.load(tmp_path / "run")
    torch.testing.assert_close(back.log_likelihood(valid), run.log_likelihood(valid))
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "inference_data.nc").is_file()
    assert back.sample(5).shape == (5, 64)
    assert run.history[-1]["valid_log_likelihood"] < -5  # an estimate in nats per 64-pixel image


def _case(name: str) -> dict:
    import copy

    return copy.deepcopy(next(c.values[0] for c in CASES if c.id == name))


def test_resume_equals_an_uninterrupted_run_with_augmentation_and_warmup(tmp_path, quiet):
    """Dynamic binarization draws and the KL schedule continue where they stopped: 2 + 2 epochs
    give exactly the run of 4."""
    card = _case("vae-digits-dynamic-mlp")
    card["objective"] = {"name": "elbo", "kl_warmup_epochs": 3.0}
    card["training"] = {**card["training"], "epochs": 4}
    whole = pplvm.fit(card, out=tmp_path / "whole")
    card["training"]["epochs"] = 2
    pplvm.fit(card, out=tmp_path / "part")
    resumed = pplvm.Run.resume(tmp_path / "part", epochs=4)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert [h["kl_weight"] for h in resumed.history] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    for a, b in zip(whole.guide.state_dict().values(), resumed.guide.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["vae_digits", "cvae_digits", "vae_mnist_iwae"])
def test_cards_validate(name):
    from pathlib import Path

    card = pplvm.load_card(Path(__file__).resolve().parents[2] / "models" / f"{name}.toml")
    assert card.model.family in ("vae", "cvae") and card.guide.kind == "amortized"


def test_cli_evaluates_and_samples_a_conditional_run(tmp_path, capsys):
    from pplvm.cli import main

    run_dir = tmp_path / "run"
    pplvm.fit(_case("cvae-digits-conv"), out=run_dir)
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "test" and out["exact"] is False and out["log_likelihood_mean"] < 0
    assert main(["sample", str(run_dir), "-n", "20", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 64)
