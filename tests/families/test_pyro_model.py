"""A user's own Pyro model as a family (``model.family = "pyro"``): what tracing finds, that
the traced model is the same model (same ELBO as the built-in family written the same way,
exact log-likelihoods against closed forms and brute force), minibatch scaling, Python
objects instead of import paths, and one-line errors for models pplvm cannot use."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import user_models
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

import pplvm
from pplvm.families import GaussianMixture, GMMConfig, PyroConfig, PyroModel
from pplvm.families.pyro_model import ContinuousPyroModel
from pplvm.guides import GuideTraits
from pplvm.guides import admitted as admitted_guides
from pplvm.objectives import admitted

FAST = {"epochs": 3, "lr": 0.05, "progress": False}
SMALL_EVAL = {"draws": 5, "chains": 2, "max_rows": 200}


def build(target: str, dim: int = 2, **config):
    return PyroModel.from_config(PyroConfig(target=target, **config), dim)


def test_tracing_classifies_the_sites():
    gmm = build("user_models:gmm")
    assert type(gmm) is PyroModel
    assert (gmm.plate_name, gmm.observed_site, gmm.global_sites) == ("data", "obs", ("weights", "locs", "scales"))
    assert gmm.local_sites == ("assignment",) and gmm.enumerated and gmm.likelihood == "exact"
    own = [n for n in admitted(gmm, GuideTraits()) if n.islower()]  # pplvm's names (Pyro's are class names)
    assert own == ["enum"] and admitted_guides(gmm)[:4] == ["meanfield", "map", "lowrank", "flow"]
    assert gmm.max_plate_nesting == 1

    ppca = build("user_models:BayesianPPCA", dim=4, options={"dim": 4, "latent_dim": 2})
    assert isinstance(ppca, ContinuousPyroModel)
    assert (ppca.plate_name, ppca.observed_site, ppca.global_sites) == ("rows", "x", ("W",))
    assert ppca.local_sites == ("z",) and not ppca.enumerated and ppca.likelihood == "estimate"
    assert ppca.latent_dim == 2 and "amortized" in admitted_guides(ppca)
    assert "enum" not in admitted(ppca, GuideTraits(proposal=True))

    plain = build("user_models:normal_mean", guide_target="user_models:NormalMeanGuide", guide_options={"dim": 2})
    assert plain.local_sites == () and plain.likelihood == "exact" and "custom" in admitted_guides(plain)


def _builtin_and_user(dim=2):
    builtin = GaussianMixture(GMMConfig(components=user_models.K), dim)
    return builtin, build("user_models:gmm", dim)


@pytest.mark.parametrize("num_data", [None, 200])
def test_user_gmm_has_the_builtin_gmm_elbo(num_data):
    """The same mixture written in plain Pyro and as the built-in family, scored with one guide
    under one seed: the enumerated ELBO agrees to float precision (full batch, and a minibatch
    of 40 rows out of 200 scaled by N / B)."""
    builtin, user = _builtin_and_user()
    x = torch.randn(40, 2)
    guide = AutoNormal(poutine.block(builtin, expose=list(builtin.global_sites)))
    guide(x)  # creates its parameters (drawing initial values) before the seeded comparison
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = []
    for model in (builtin, user):
        with poutine.seed(rng_seed=3):
            losses.append(elbo.loss(model, guide, x, num_data=num_data))
    assert math.isfinite(losses[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)  # float32 sums in the same order


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 4)])
def test_user_gmm_log_likelihood_is_the_closed_form(batch_shape):
    """Contracting the enumerated assignment gives the mixture's closed-form marginal
    ``logsumexp_k log w_k + log N(x | μ_k, σ_k)`` (the built-in family's, itself checked against
    scikit-learn) for every parameter draw of a batch."""
    builtin, user = _builtin_and_user(dim=3)
    gen = torch.Generator().manual_seed(0)
    s, k = batch_shape, user_models.K
    params = {
        "weights": torch.distributions.Dirichlet(torch.ones(k)).sample(s),
        "locs": torch.randn(*s, k, 3, generator=gen),
        "scales": torch.rand(*s, k, 3, generator=gen) + 0.5,
    }
    x = torch.randn(11, 3, generator=gen)
    got = user.log_likelihood(x, params)
    assert got.shape == (*s, 11)
    torch.testing.assert_close(got, builtin.log_likelihood(x, params), rtol=1e-5, atol=1e-5)


def test_minibatch_losses_add_up_to_the_full_batch_loss():
    """With a point-estimate guide the enumerated loss is deterministic; a minibatch's loss is
    scaled by N / B, so the batches' losses weighted by B / N add up to the full-batch loss."""
    user = build("user_models:gmm")
    x = torch.randn(30, 2)
    guide = AutoDelta(poutine.block(user, expose=list(user.global_sites)))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    full = elbo.loss(user, guide, x)
    parts = sum(elbo.loss(user, guide, x[i : i + 10], num_data=30) * 10 / 30 for i in range(0, 30, 10))
    assert parts == pytest.approx(full, rel=1e-5)  # float32 sums in a different order


def test_continuous_local_log_likelihood_estimate_matches_the_closed_form():
    """PPCA's marginal is ``N(x | μ, Wᵀ W + σ² I)``; importance sampling from the prior of z
    (k = 4000, L = 1) agrees with it within 4 standard errors of the mean over the rows plus
    the IWAE bias, which is below the standard error at this k (both are O(1/k))."""
    model = build("user_models:BayesianPPCA", dim=3, options={"dim": 3, "latent_dim": 1})
    with torch.no_grad():
        model.holder.module.mu.copy_(torch.tensor([0.5, -1.0, 0.0]))
        model.holder.module.sigma = torch.tensor(0.8)
    W = torch.tensor([[1.0, -0.5, 0.3]])
    x = torch.randn(25, 3, generator=torch.Generator().manual_seed(1))
    exact = dist.MultivariateNormal(model.holder.module.mu.detach(), W.T @ W + 0.64 * torch.eye(3)).log_prob(x)
    est = model.log_likelihood(x, {"W": W}, num_samples=4000, seed=0)
    assert est.shape == (25,)
    assert abs(float(est.mean() - exact.mean())) < 0.02


def test_fit_from_a_card_by_import_path(tmp_path):
    card = {
        "model": {"family": "pyro", "target": "user_models:gmm"},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "synthetic_gmm", "n": 150, "dim": 2, "components": 3},
        "training": {**FAST, "epochs": 60},
        "evaluation": SMALL_EVAL,
    }
    run = pplvm.fit(card, out=tmp_path / "run")
    first, last = run.history[0]["train_loss"], run.history[-1]["train_loss"]
    assert last < first
    loaded = pplvm.load(tmp_path / "run")
    x = run.transform.inverse(run.dataset.valid)
    torch.testing.assert_close(loaded.log_likelihood(x), run.log_likelihood(x))
    resp = run.posterior(x)["assignment"]
    torch.testing.assert_close(resp.sum(-1), torch.ones(len(x)))
    assert run.map_states(x)["assignment"].shape == (len(x),)


def test_model_object_from_python(tmp_path):
    """``pplvm.fit(card, model=fn)`` needs no import path; loading the run needs the object again."""
    card = {
        "model": {"family": "pyro"},
        "guide": {"kind": "meanfield"},
        "objective": {"name": "elbo"},
        "data": {"source": "iris"},
        "training": FAST,
        "evaluation": SMALL_EVAL,
    }
    run = pplvm.fit(card, out=tmp_path / "run", model=user_models.normal_mean)
    with pytest.raises(pplvm.CardError, match="model.target: expected 'package.module:name'"):
        pplvm.load(tmp_path / "run")
    loaded = pplvm.load(tmp_path / "run", model=user_models.normal_mean)
    x = run.transform.inverse(run.dataset.train[:7])
    torch.testing.assert_close(loaded.log_likelihood(x), run.log_likelihood(x))
    with pytest.raises(pplvm.CardError, match="model.family = 'gmm' takes no model= or guide= object"):
        pplvm.Run.from_card({**card, "model": {"family": "gmm"}, "objective": {"name": "enum"}}, model=user_models.gmm)


def test_no_local_model_log_likelihood_is_the_closed_form():
    model = build("user_models:normal_mean", dim=2)
    params = {"mu": torch.tensor([[0.5, -0.5], [1.0, 2.0]]), "sigma": torch.tensor([0.7, 1.3])}
    x = torch.randn(6, 2)
    want = dist.Normal(params["mu"][:, None], params["sigma"][:, None, None]).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, params), want)


def test_custom_guide_fits_the_conjugate_posterior_mean():
    """The user's guide for a normal mean: after fitting, q(μ)'s mean is near the data mean
    (posterior mean under a N(0, 10²) prior with 150 rows: the data mean to within 1e-3)."""
    card = {
        "model": {
            "family": "pyro",
            "target": "user_models:normal_mean",
            "guide_target": "user_models:NormalMeanGuide",
            "guide_options": {"dim": 4},
        },
        "guide": {"kind": "custom"},
        "objective": {"name": "elbo"},
        "data": {"source": "iris", "standardize": True, "valid_fraction": 0.0},
        "training": {**FAST, "epochs": 400, "lr": 0.05},
        "evaluation": SMALL_EVAL,
    }
    run = pplvm.fit(card)
    m = run.guide.holder.module.m.detach()
    # 0.1: the guide's q(μ) mean after 400 Adam steps on a single-particle ELBO (noise ~ s/√N)
    torch.testing.assert_close(m, run.dataset.train.mean(0), atol=0.1, rtol=0)


@pytest.mark.parametrize(
    "target, message",
    [
        ("user_models:no_plate", "no data plate: the observed site 'obs' must sit inside pyro.plate"),
        ("user_models:no_observation", "has no observed site"),
        ("user_models:discrete_global", "site 'k' is a discrete latent outside the data plate"),
        ("user_models:unbounded_local", "site 'n' is discrete with an unbounded support"),
        ("user_models:global_param", "uses pyro.param"),
        ("user_models:broken", "failed: ValueError: this model is broken"),
        ("user_models:NOT_A_MODEL", "expected a Pyro model function, a PyroModule or a PyroModule class, got int"),
        ("user_models:missing", "module 'user_models' has no attribute 'missing'"),
        ("no_such_module_here:model", "cannot import module 'no_such_module_here'"),
    ],
)
def test_unusable_models_are_refused_in_one_line(target, message):
    card = {"model": {"family": "pyro", "target": target}, "data": {"source": "iris"}}
    with pytest.raises(pplvm.CardError, match="^model.*" + message.replace("(", r"\(").replace(")", r"\)")) as err:
        pplvm.Run.from_card(card)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "guide_target, message",
    [
        ("user_models:param_guide", "the guide uses pyro.param"),
        ("user_models:partial_guide", "does not sample the model's latent site\\(s\\) sigma"),
    ],
)
def test_unusable_guides_are_refused(guide_target, message):
    card = {
        "model": {"family": "pyro", "target": "user_models:normal_mean", "guide_target": guide_target},
        "guide": {"kind": "custom"},
        "data": {"source": "iris"},
    }
    with pytest.raises(pplvm.CardError, match="model.guide_target: .*" + message):
        pplvm.Run.from_card(card)


def test_bad_target_syntax_is_a_card_error():
    with pytest.raises(pplvm.CardError, match="model.target"):
        pplvm.card_from_dict({"model": {"family": "pyro", "target": "no colon"}, "data": {"source": "iris"}})


def test_guides_and_objectives_that_cannot_work_are_refused():
    base = {"model": {"family": "pyro", "target": "user_models:gmm"}, "data": {"source": "iris"}}
    with pytest.raises(pplvm.IncompatibleError, match="guide.kind = 'amortized' is not available.*meanfield, map"):
        pplvm.Run.from_card({**base, "guide": {"kind": "amortized"}, "objective": {"name": "enum"}})
    with pytest.raises(pplvm.IncompatibleError, match="objective.name = 'elbo' cannot train.*assignment"):
        pplvm.Run.from_card({**base, "objective": {"name": "elbo"}})


def test_mixed_locals_estimate_matches_the_mixture_of_factor_analysers_marginal():
    """A mixture of factor analysers has a discrete (component) and a continuous (factor) local
    latent: the component is summed out exactly for every importance draw of the factor. With
    the factor's prior as proposal (L = 1, k = 3000) the estimate equals the closed-form
    marginal Σ_c π_c N(x | μ_c, W_cᵀW_c + diag ψ²) within 0.02 nats per row on average (the
    IS error at this k, measured ≈ 0.003)."""
    model = build("user_models:MixtureOfFactorAnalysers", dim=3, options={"dim": 3, "components": 2})
    assert isinstance(model, ContinuousPyroModel) and model.enumerated
    own = [n for n in admitted(model, GuideTraits(proposal=True)) if n.islower()]
    assert own == ["enum"] and "amortized" in admitted_guides(model) and model.likelihood == "estimate"
    mfa = model.holder.module
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(2)) + mfa.mu[0].detach()

    def prior(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    est = model.log_likelihood(x, {}, proposal=prior, num_samples=3000, seed=0)
    exact = mfa.marginal(x)
    assert abs(float((est - exact).mean())) < 0.02
    assert float((est - exact).abs().max()) < 0.1


# ------------------------------------------------------------------ train and eval mode
BATCHNORM_CARD = {
    "model": {"family": "pyro"},
    "guide": {"kind": "map"},
    "objective": {"name": "enum"},
    "data": {"source": "synthetic_gmm", "n": 200, "dim": 2, "components": 3, "test_fraction": 0.2},
    "training": {**FAST, "epochs": 4, "batch_size": 32},
    "evaluation": SMALL_EVAL,
}


def test_a_decoder_with_batchnorm_and_dropout_scores_each_row_on_its_own():
    """pplvm scores data with the decoder's BatchNorm1d and Dropout in .eval(): the model fits
    (its shapes probed on placeholder rows), each of 10 held-out rows has the same log-likelihood
    scored alone as inside the whole test set (to 1e-6: the same float32 operations per row),
    equal to the marginal computed by hand with the network in .eval() (to 1e-5: float32 sums in
    another order); the network is in training mode again afterwards, as it was."""
    run = pplvm.fit(BATCHNORM_CARD, model=user_models.BatchNormMixture(2))
    net = run.model.holder.module  # pplvm's copy of the module passed
    x = run.transform.inverse(run.dataset.test)
    alone, within = run.log_likelihood(x[:10]), run.log_likelihood(x)[:10]
    torch.testing.assert_close(alone, within, rtol=0, atol=1e-6)
    weights = run.params()["weights"]
    net.eval()
    by_hand = net.marginal(run.transform(x[:10]), weights) + run.transform.log_abs_det_jacobian(x[:10])
    net.train()
    torch.testing.assert_close(alone, by_hand, rtol=0, atol=1e-5)
    assert all(m.training for m in net.modules())


def test_training_steps_run_in_train_mode_and_nothing_else_does():
    """A hook records the decoder's Dropout mode at every call: .train() once per training step
    (the enumerated ELBO runs the model once), .eval() for everything else — the shape probes,
    the guide's first call, the held-out evaluation after each epoch, and the queries. The
    BatchNorm's running statistics move in steps only: after each epoch, held-out evaluation
    included, it has counted exactly as many batches as steps were taken."""
    mine = user_models.BatchNormMixture(2)
    seen: list[bool] = []
    mine.decoder[3].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    run = pplvm.Run.from_card(BATCHNORM_CARD, model=mine)
    net = run.model.holder.module  # pplvm's copy (the hook with it)
    built = len(seen)
    assert built and not any(seen)
    counted = []
    run.fit(callbacks=[lambda trainer, m: counted.append((m["step"], int(net.decoder[1].num_batches_tracked)))])
    steps = run.history[-1]["step"]
    assert seen.count(True) == steps and run.dataset.valid is not None
    assert seen.count(False) >= built + len(run.history)  # a held-out evaluation after each epoch
    assert [batches for _, batches in counted] == [step for step, _ in counted]
    seen.clear()
    x = run.transform.inverse(run.dataset.test)
    run.evaluate(x)
    run.sample(5)
    run.to_arviz(x)
    assert seen and not any(seen)


def test_a_custom_guide_with_batchnorm_gives_the_globals_without_data():
    """The globals' point estimate and draws run the user's guide on one placeholder row (the
    globals need no data). Its encoder's BatchNorm1d refuses a single row in .train() (no
    variance from one value) and takes it in .eval(), where pplvm runs it."""
    card = {
        "model": {
            "family": "pyro",
            "target": "user_models:BayesianPPCA",
            "options": {"dim": 4, "latent_dim": 2},
            "guide_target": "user_models:EncoderPPCAGuide",
            "guide_options": {"dim": 4},
        },
        "guide": {"kind": "custom"},
        "objective": {"name": "elbo"},
        "data": {"source": "iris"},
    }
    run = pplvm.Run.from_card(card)
    encoder = run.guide.holder.module.encoder
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        encoder(torch.zeros(1, 4))
    assert run.params()["W"].shape == (2, 4) and run.draws(3)["W"].shape == (3, 2, 4)
    assert encoder.training
