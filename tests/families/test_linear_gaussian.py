"""PPCA and factor analysis against outside truth: scikit-learn's marginal densities, the SVD's
principal subspace and Tipping & Bishop's closed-form ML solution, Gaussian conditioning for
the posterior, and the ELBO of the exact-posterior guide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from cases import CASES
from pyro import poutine
from pyro.infer import Trace_ELBO
from sklearn.decomposition import PCA, FactorAnalysis

import pplvm
from pplvm import Run
from pplvm.errors import CardError, DataError, PplvmError
from pplvm.families import PPCA, FAConfig, PPCAConfig
from pplvm.families import FactorAnalysis as FA
from pplvm.guides import make_guide


def low_rank_data(n=300, dim=6, rank=2, noise=0.5, seed=0):
    """``x = W z + μ + ε`` with decreasing column scales, so the top-``rank`` subspace is clear."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, rank)) * np.linspace(3.0, 1.5, rank)
    return rng.normal(size=(n, rank)) @ w.T + noise * rng.normal(size=(n, dim)) + 2.0


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


# ------------------------------------------------------------------------ marginal oracles
# The marginal N(μ, W Wᵀ + Ψ) in float64 against scikit-learn's score_samples at the same
# parameters. Both are exact closed forms; 1e-6 relative leaves room only for rounding.
@pytest.mark.parametrize("data_seed", [0, 1])
def test_ppca_marginal_equals_sklearn_pca_score_samples(data_seed):
    x = low_rank_data(seed=data_seed, noise=0.7)
    pca = PCA(n_components=2).fit(x)
    w = pca.components_.T * np.sqrt(pca.explained_variance_ - pca.noise_variance_)
    model = PPCA(PPCAConfig(latent_dim=2), 6)
    params = {"weight": t64(w), "loc": t64(pca.mean_), "noise": t64([np.sqrt(pca.noise_variance_)])}
    ours = model.log_likelihood(t64(x), params).numpy()
    theirs = pca.score_samples(x)
    assert np.max(np.abs(ours - theirs) / np.abs(theirs)) <= 1e-6


@pytest.mark.parametrize("data_seed", [0, 1])
def test_fa_marginal_equals_sklearn_factor_analysis_score_samples(data_seed):
    rng = np.random.default_rng(data_seed)
    x = low_rank_data(seed=data_seed) * rng.uniform(0.5, 3.0, size=6)  # unequal noise per feature
    fa = FactorAnalysis(n_components=2, random_state=0).fit(x)
    model = FA(FAConfig(latent_dim=2), 6)
    params = {"weight": t64(fa.components_.T), "loc": t64(fa.mean_), "noise": t64(np.sqrt(fa.noise_variance_))}
    ours = model.log_likelihood(t64(x), params).numpy()
    theirs = fa.score_samples(x)
    assert np.max(np.abs(ours - theirs) / np.abs(theirs)) <= 1e-6


@pytest.mark.parametrize("batch", [(), (5,), (2, 4)])
def test_batched_weights_give_one_log_likelihood_row_per_draw(batch):
    model = PPCA(PPCAConfig(latent_dim=2, prior="normal"), 4)
    x = torch.randn(7, 4, dtype=torch.float64)
    w = torch.randn(*batch, 4, 2, dtype=torch.float64)
    ll = model.log_likelihood(x, {"weight": w})
    assert ll.shape == (*batch, 7)
    flat = w.reshape(-1, 4, 2)
    each = torch.stack([model.log_likelihood(x, {"weight": flat[i]}) for i in range(len(flat))])
    assert torch.allclose(ll.reshape(-1, 7), each, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------ posterior oracle
@pytest.mark.parametrize("family", [PPCA, FA])
def test_local_posterior_equals_gaussian_conditioning(family):
    """p(z | x) from the joint Gaussian: mean Wᵀ Σ⁻¹ (x − μ), cov I − Wᵀ Σ⁻¹ W, Σ = W Wᵀ + Ψ
    (computed with solves); for PPCA this is Tipping & Bishop's N(M⁻¹Wᵀ(x−μ), σ²M⁻¹)."""
    torch.manual_seed(0)
    D, L = 5, 2
    model = family(family.Config(latent_dim=L), D)
    w, loc = torch.randn(D, L, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    noise = torch.rand(1 if family is PPCA else D, dtype=torch.float64) + 0.3
    x = torch.randn(8, D, dtype=torch.float64)
    q = model.local_posterior(x, {"weight": w, "loc": loc, "noise": noise})
    sigma = w @ w.T + torch.diag(noise.expand(D) ** 2)
    mean = torch.linalg.solve(sigma, (x - loc).T).T @ w
    cov = torch.eye(L, dtype=torch.float64) - w.T @ torch.linalg.solve(sigma, w)
    assert torch.allclose(q.mean, mean, atol=1e-12)
    assert torch.allclose(q.covariance_matrix, cov.expand(8, L, L), atol=1e-12)
    if family is PPCA:
        s2 = noise[0] ** 2
        m = w.T @ w + s2 * torch.eye(L, dtype=torch.float64)
        assert torch.allclose(q.mean, torch.linalg.solve(m, w.T @ (x - loc).T).T, atol=1e-12)
        assert torch.allclose(
            q.covariance_matrix[0], s2 * torch.linalg.solve(m, torch.eye(L, dtype=torch.float64)), atol=1e-12
        )


# ------------------------------------------------------------------- ELBO of the exact guide
def _elbo_draws(model, guide, x, num_data=None, draws=20):
    """``draws`` single-particle Monte-Carlo ELBOs, each under its own seed."""
    out = []
    for seed in range(draws):
        with poutine.seed(rng_seed=seed):
            out.append(-Trace_ELBO(num_particles=1).loss(model, guide, x, num_data=num_data))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("family", [PPCA, FA])
def test_exact_guide_elbo_is_the_marginal_with_zero_variance(family):
    """With q(z | x) = p(z | x) the integrand log p(x, z) − log q(z | x) equals log p(x) for
    every z, so every single-draw ELBO equals the exact marginal (rounding: 1e-9 relative in
    float64), and the amortized guide's ELBO, a genuine estimate, varies and lies below it."""
    x = t64(low_rank_data(n=60, dim=5))
    model = family(family.Config(latent_dim=2, init="random"), 5).double()
    exact = model.log_likelihood(x, {}).sum().item()
    elbos = _elbo_draws(model, make_guide(model, "exact", x), x)
    assert elbos.std().item() <= 1e-9 * abs(exact)
    assert elbos.mean().item() == pytest.approx(exact, rel=1e-9)

    # minibatch: the data plate scales the B rows by N / B (an unbiased estimate of the total)
    sub = _elbo_draws(model, make_guide(model, "exact", x), x[:10], num_data=60, draws=3)
    assert sub.mean().item() == pytest.approx(6 * model.log_likelihood(x[:10], {}).sum().item(), rel=1e-9)

    amortized = _elbo_draws(model, make_guide(model, "amortized", x).double(), x)
    assert amortized.std().item() > 1e-3 * abs(exact)
    assert amortized.mean().item() < exact


# ----------------------------------------------------------------------- fitting oracles
def _card(family="ppca", guide="exact", latent_dim=2, epochs=400, **model):
    return {
        "name": "t",
        "model": {"family": family, "latent_dim": latent_dim, **model},
        "guide": {"kind": guide},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"epochs": epochs, "lr": 0.05, "progress": False},
        "evaluation": {"draws": 10, "chains": 2},
    }


def test_ml_fit_recovers_the_principal_subspace_and_tipping_bishop_solution():
    """Maximum likelihood PPCA (exact guide: the ELBO is log p(x), so Adam climbs the exact
    likelihood) against the closed form: span(W) = top-2 right singular vectors of the centred
    data, σ² = mean of the discarded eigenvalues, W Wᵀ = U (Λ − σ²) Uᵀ. Measured: angles
    ~1e-8 rad, σ² to 1e-7 relative after 400 full-batch steps; tolerances 1e-3 rad and 1e-4
    leave float32 optimisation room but would catch a wrong subspace (angles ~0.1 or more)."""
    x = low_rank_data(n=400, dim=6, seed=1)
    run = Run.from_card(_card(init="random"), data=x).fit()  # not started at the answer
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = s**2 / len(x)
    learned = run.model.weight.detach().double().numpy()
    angles = scipy.linalg.subspace_angles(learned, vt[:2].T)
    assert angles.max() < 1e-3
    s2 = eig[2:].mean()
    assert run.model.noise_scale()[0].item() ** 2 == pytest.approx(s2, rel=1e-4)
    w_ml = vt[:2].T * np.sqrt(eig[:2] - s2)
    assert np.abs(learned @ learned.T - w_ml @ w_ml.T).max() < 1e-3 * np.abs(w_ml @ w_ml.T).max()


def test_pca_init_starts_at_the_closed_form_and_fa_improves_on_it():
    """``init = "pca"`` puts PPCA at its ML optimum before any step (so training keeps it
    there), and gives FA a start whose likelihood training then raises."""
    x = low_rank_data(n=300, dim=6, seed=2) * np.linspace(0.5, 3.0, 6)
    ppca = Run.from_card(_card(epochs=1), data=x)
    sk = PCA(n_components=2).fit(x)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    assert ppca.model.log_likelihood(x32, {}).mean().item() == pytest.approx(sk.score(x), rel=1e-5)
    fa = Run.from_card(_card(family="fa", epochs=300), data=x)
    before = fa.model.log_likelihood(x32, {}).mean().item()
    fa.fit()
    after = fa.model.log_likelihood(x32, {}).mean().item()
    assert after > before + 0.01
    assert after == pytest.approx(FactorAnalysis(n_components=2, random_state=0).fit(x).score(x), abs=2e-3)


def test_posterior_of_a_run_is_q_z_given_x():
    x = low_rank_data(n=100, dim=5)
    run = Run.from_card(_card(epochs=20), data=x).fit()
    post = run.posterior(x[:7])
    q = run.model.local_posterior(torch.as_tensor(x[:7], dtype=torch.float32), {})
    assert set(post) == {"loc", "scale"} and post["loc"].shape == post["scale"].shape == (7, 2)
    assert torch.allclose(post["loc"], q.mean) and torch.allclose(post["scale"], q.stddev)

    amortized = Run.from_card(_card(guide="amortized", epochs=2), data=x).fit()
    post = amortized.posterior(x[:7])
    assert post["loc"].shape == (7, 2) and (post["scale"] > 0).all()


def test_bayesian_weight_is_a_global_latent_with_draws():
    x = low_rank_data(n=80, dim=4)
    run = Run.from_card(_card(epochs=30, prior="normal"), data=x).fit()
    assert run.model.global_sites == ("weight",)
    draws = run.draws(6)
    assert draws["weight"].shape == (6, 4, 2) and draws["weight"].std(0).min() > 0
    idata = run.to_arviz()
    assert idata.log_likelihood["obs"].shape == (2, 10, 80)


# -------------------------------------------------------------------------- bad input
def test_latent_dim_not_below_data_dim_is_a_card_error():
    with pytest.raises(CardError, match=r"latent_dim = 4 must be smaller than the data dimension D = 4"):
        Run.from_card(_card(latent_dim=4), data=np.random.default_rng(0).normal(size=(20, 4)))


def test_nan_rows_are_named():
    x = low_rank_data(n=30, dim=4)
    x[[3, 17], 1] = np.nan
    with pytest.raises(DataError, match=r"2 row\(s\) contain NaN or inf \(rows 3, 17\)"):
        Run.from_card(_card(), data=x)


def test_dimension_mismatch_at_query_time():
    run = Run.from_card(_card(epochs=1), data=low_rank_data(n=30, dim=4)).fit()
    with pytest.raises(DataError, match="expected 4 columns"):
        run.log_likelihood(np.zeros((3, 5)))
    with pytest.raises(PplvmError, match="expected 4 columns"):
        run.posterior(np.zeros((3, 3)))


def test_card_dim_mismatch_and_guide_errors():
    with pytest.raises(DataError, match="model.dim = 5"):
        Run.from_card(_card(dim=5), data=low_rank_data(n=30, dim=4))
    with pytest.raises(pplvm.IncompatibleError, match="guide.kind = 'lowrank' is not available for family 'ppca'"):
        Run.from_card(_card(guide="lowrank"), data=low_rank_data(n=30, dim=4))
    gmm = {
        "name": "g",
        "model": {"family": "gmm", "components": 2},
        "guide": {"kind": "exact"},
        "objective": {"name": "enum"},
        "data": {"source": "iris"},
        "training": {"progress": False},
    }
    with pytest.raises(pplvm.IncompatibleError, match="guide.kind = 'exact' is not available for family 'gmm'"):
        Run.from_card(gmm)


# ------------------------------------------------------------------------ cases and cards
LG_CASES = [c for c in CASES if c.values[0]["model"]["family"] in ("ppca", "fa")]


@pytest.mark.parametrize("card", LG_CASES)
def test_cases_fit_save_and_reload(card, tmp_path):
    run = pplvm.fit(card, tmp_path / "run")
    loaded = pplvm.load(tmp_path / "run")
    x = run.sample(5, seed=1)
    assert torch.allclose(run.log_likelihood(x), loaded.log_likelihood(x))
    # the mean-field guide has q(z_n) for the training rows only: compare those
    at = None if run.card.guide.kind == "meanfield" else x
    assert torch.allclose(run.posterior(at)["loc"], loaded.posterior(at)["loc"])
    assert (tmp_path / "run" / "latents.png").is_file()


CARDS = sorted((Path(__file__).resolve().parents[2] / "models").glob("[pf][pa]*_*.toml"))


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_bundled_cards_validate_and_train(path):
    card = pplvm.load_card(path, {"training.epochs": 2, "training.progress": False})
    assert card.model.family in ("ppca", "fa")
    if card.model.dim is None:  # data cards (the SBC card simulates its data instead)
        run = pplvm.fit(card)
        assert np.isfinite(run.history[-1]["train_loss"])


def test_cli_lists_the_families(capsys):
    from pplvm.cli import main

    assert main(["list", "--json"]) == 0
    import json

    families = json.loads(capsys.readouterr().out)["families"]
    assert families["ppca"]["guides"] == ["amortized", "exact", "meanfield", "map", "flow"] and "fa" in families


# ------------------------------------------------------------------ mean-field local guide
def test_meanfield_guide_plate_picks_each_rows_own_parameters():
    """A minibatch carries its training rows (Batch.index); the guide's q(z_n) for that batch
    is built from exactly those rows' parameters, and the data plate scales by N / B."""
    x = low_rank_data(n=50, dim=5, seed=3)
    run = Run.from_card(_card(guide="meanfield", epochs=1), data=x)
    with torch.no_grad():
        run.guide.loc.copy_(torch.arange(50.0)[:, None].expand(50, 2))
    batch = pplvm.data.indexed(run.dataset.train)[torch.tensor([7, 3, 41])]
    tr = poutine.trace(run.guide).get_trace(batch, num_data=50)
    site = tr.nodes["z"]
    assert site["fn"].mean[:, 0].tolist() == [7.0, 3.0, 41.0]
    assert site["cond_indep_stack"][0].full_size == 50 and site["scale"] == pytest.approx(50 / 3)


def test_meanfield_guide_converges_to_the_exact_posterior_and_marginal():
    """Non-amortized mean-field VI on PPCA: the ELBO optimum makes W's columns orthogonal, so the
    exact posterior N(M⁻¹Wᵀ(x−μ), σ²M⁻¹) is diagonal and reachable; after training the ELBO per
    datum is within 0.02 nats of the exact log-likelihood at the learned parameters (the gap is
    the mean KL(q ‖ p(z|x)); it starts above 1 nat) and q's means and scales match the exact
    posterior's. Minibatches of 50 exercise the row indexing; a cosine learning-rate decay
    damps the SGD jitter of the 400 per-datum parameters. Measured: gap 0.010 nats, largest
    mean error 0.08 and scale error 0.05 (posterior sds ~0.25), so the tolerances below have
    room for float32 and seeds, while a q stuck near its start (errors > 1) fails."""
    x = low_rank_data(n=200, dim=5, seed=4)
    card = _card(guide="meanfield", epochs=800)
    card["objective"] = {"name": "meanfield"}
    card["training"].update(batch_size=50, lr=0.05, lr_schedule="cosine", lr_final_ratio=0.01)
    run = Run.from_card(card, data=x).fit()
    train = pplvm.data.indexed(run.dataset.train)
    n = len(train)
    params = run.params()
    exact_ll = run.model.log_likelihood(run.dataset.train, params).mean().item()
    elbo = np.mean([-Trace_ELBO().loss(run.model, run.guide, train, num_data=n) / n for _ in range(20)])
    assert elbo <= exact_ll + 1e-3
    assert exact_ll - elbo < 0.02
    q = run.posterior()
    exact = run.model.local_posterior(run.dataset.train, params)
    assert (q["loc"] - exact.mean).abs().max() < 0.15
    assert (q["scale"] - exact.stddev).abs().max() < 0.1


def test_meanfield_guide_refuses_new_data_and_round_trips(tmp_path):
    x = low_rank_data(n=60, dim=5, seed=5)
    card = _card(guide="meanfield", epochs=5)
    card["data"]["valid_fraction"] = 0.2
    run = Run.from_card(card, data=x).fit(tmp_path / "mf")
    assert "valid_log_likelihood" in run.history[-1] and "valid_loss" not in run.history[-1]
    with pytest.raises(pplvm.IncompatibleError, match="training data only"):
        run.posterior(x[:3])
    back = pplvm.load(tmp_path / "mf")
    torch.testing.assert_close(back.posterior()["loc"], run.posterior()["loc"])
    assert back.guide.loc.shape == (48, 2)
