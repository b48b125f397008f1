"""pplvm.sklearn: scikit-learn's own estimator checks, GridSearchCV and Pipeline, and every
estimator's numbers against an outside oracle (scikit-learn, hmmlearn, closed forms)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hmmlearn.hmm import GaussianHMM
from sklearn.base import clone
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import pplvm
from pplvm.sklearn import FA, GMM, HMM, PPCA, VAE, CardEstimator

DOC = Path(__file__).parents[2] / "docs" / "integrations" / "sklearn.md"


def mixture(seed=0, n=100):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    return np.concatenate([rng.normal(size=(n, 2)) * [1.0, 0.5] + c for c in centres])


def low_rank(seed=0, n=300, d=6, rank=2):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, rank)) * [3.0, 1.5]
    return rng.normal(size=(n, rank)) @ w.T + 0.4 * rng.normal(size=(n, d)) + 1.0


# ------------------------------------------------------------------ scikit-learn's checks
@pytest.mark.parametrize("estimator", [GMM(), PPCA()], ids=["GMM", "PPCA"])
def test_check_estimator_passes_every_check(estimator):
    """The whole battery (legacy checks included), none expected to fail; the one not run is
    scikit-learn's array-API check, which it skips unless SCIPY_ARRAY_API=1."""
    results = []
    check_estimator(estimator, on_fail=None, on_skip=None, callback=lambda **r: results.append(r))
    assert len(results) >= 40
    other = {(r["check_name"], r["status"], repr(r["exception"])[:300]) for r in results if r["status"] != "passed"}
    assert {(name, status) for name, status, _ in other} == {("check_array_api_input", "skipped")}, other


def test_the_docs_gridsearch_picks_the_true_k_as_sklearn_does():
    """The GridSearchCV block of docs/integrations/sklearn.md, run as written: its asserts
    compare the K picked by cross-validated log-likelihood with GaussianMixture's and the truth."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (snippet,) = [b for b in blocks if "GridSearchCV(GMM" in b]
    scope: dict = {}
    exec(compile(snippet, str(DOC), "exec"), scope)
    ours, theirs = scope["ours"], scope["theirs"]
    # the fold scores agree too: both are exact mean log-likelihoods of the same folds
    k3 = ours.cv_results_["params"].index({"n_components": 3})
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"][k3], theirs.cv_results_["mean_test_score"][k3], rtol=1e-4
    )


# ------------------------------------------------------------------ oracles
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_matches_sklearn_gaussian_mixture(covariance_type):
    x = mixture()
    ours = GMM(3, covariance_type=covariance_type, tol=1e-6, random_state=0).fit(x)
    theirs = GaussianMixture(3, covariance_type=covariance_type, tol=1e-6, random_state=0).fit(x)
    # the same maximum of the same likelihood: float32 EM against float64 (rtol 1e-5 of ~3.7 nats)
    np.testing.assert_allclose(ours.score(x), theirs.score(x), rtol=1e-5)
    np.testing.assert_allclose(ours.score_samples(x), theirs.score_samples(x), rtol=1e-4, atol=1e-4)
    order = np.argsort(ours.means_[:, 0] + 10 * ours.means_[:, 1])
    ref = np.argsort(theirs.means_[:, 0] + 10 * theirs.means_[:, 1])
    np.testing.assert_allclose(ours.means_[order], theirs.means_[ref], atol=1e-3)
    np.testing.assert_allclose(ours.weights_[order], theirs.weights_[ref], atol=1e-4)
    np.testing.assert_allclose(ours.covariances_[order], theirs.covariances_[ref], atol=1e-3)
    np.testing.assert_allclose(ours.predict_proba(x)[:, order], theirs.predict_proba(x)[:, ref], atol=1e-4)
    assert ours.likelihood_ == "exact"


def test_ppca_score_is_the_closed_form_maximum_and_sklearn_pca_score():
    """The maximum-likelihood PPCA (Tipping & Bishop): C = U_L Λ_L U_Lᵀ + σ² (I − U_L U_Lᵀ), σ² the
    mean of the discarded eigenvalues of the covariance (1/N); scikit-learn's PCA.score is the
    same log-likelihood with its eigenvalues of the n − 1 covariance."""
    x = low_rank()
    ours = PPCA(2).fit(x)
    lam, u = np.linalg.eigh(np.cov(x.T, bias=True))
    lam, u = lam[::-1], u[:, ::-1]
    s2 = lam[2:].mean()
    cov = (u[:, :2] * lam[:2]) @ u[:, :2].T + s2 * (np.eye(6) - u[:, :2] @ u[:, :2].T)
    oracle = scipy.stats.multivariate_normal(x.mean(0), cov).logpdf(x)
    # float32 fit and evaluation (a row's quadratic form of ~10 nats to ~1e-6 relative, the
    # float32 EM's parameters to ~1e-5): measured max relative difference 2e-5
    np.testing.assert_allclose(ours.score_samples(x), oracle, rtol=1e-4)
    np.testing.assert_allclose(ours.score(x), PCA(2).fit(x).score(x), rtol=1e-4)  # n vs n − 1: ~1e-5 here
    # E[z | x] = (WᵀW + σ² I)⁻¹ Wᵀ (x − μ)
    w, mu, s2 = ours.components_.T, ours.mean_, ours.noise_variance_
    expected = np.linalg.solve(w.T @ w + s2 * np.eye(2), w.T @ (x - mu).T).T
    np.testing.assert_allclose(ours.transform(x), expected, rtol=1e-4, atol=1e-4)


def test_fa_score_is_sklearn_factor_analysis_score_at_the_same_parameters():
    x = low_rank(1) * np.linspace(0.5, 2.0, 6)  # unequal noise per feature
    ours = FA(2, tol=1e-7, max_iter=500).fit(x)
    oracle = FactorAnalysis(2).fit(x)  # its score formula, then at our parameters
    oracle.components_, oracle.noise_variance_, oracle.mean_ = ours.components_, ours.noise_variance_, ours.mean_
    np.testing.assert_allclose(ours.score_samples(x), oracle.score_samples(x), rtol=1e-5, atol=1e-5)
    # and the maximum is scikit-learn's, converged tightly (both climb the same likelihood)
    tight = FactorAnalysis(2, tol=1e-8, max_iter=10_000).fit(x)
    np.testing.assert_allclose(ours.score(x), tight.score(x), atol=1e-4)


def test_hmm_scores_paths_and_posteriors_equal_hmmlearn_at_the_same_parameters():
    truth = GaussianHMM(2, covariance_type="diag")
    truth.startprob_, truth.transmat_ = np.array([0.6, 0.4]), np.array([[0.9, 0.1], [0.2, 0.8]])
    truth.means_, truth.covars_ = np.array([[0.0, 0.0], [3.0, 3.0]]), np.ones((2, 2))
    x, _ = truth.sample(300, random_state=1)
    lengths = [100, 120, 80]
    ours = HMM(2, random_state=0).fit(x, lengths=lengths)
    ref = GaussianHMM(2, covariance_type="diag")
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = ours.startprob_, ours.transmat_, ours.means_, ours.covars_
    starts = np.cumsum([0, *lengths])
    per_sequence = [ref.score(x[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    np.testing.assert_allclose(ours.score_samples(x, lengths=lengths), per_sequence, rtol=1e-5)
    np.testing.assert_allclose(ours.score(x, lengths=lengths) * len(x), ref.score(x, lengths), rtol=1e-5)
    np.testing.assert_array_equal(ours.predict(x, lengths=lengths), ref.predict(x, lengths))
    np.testing.assert_allclose(ours.predict_proba(x, lengths=lengths), ref.predict_proba(x, lengths), atol=1e-5)
    # hmmlearn's positional lengths would be y here: refused rather than scoring one long sequence
    with pytest.raises(pplvm.PplvmError, match="^y: a sequence family takes no y"):
        ours.score(x, lengths)
    x_new, states = ours.sample(2)
    assert x_new.shape == (2 * ours.sample_length, 2) and states is None


def test_pipeline_scaler_ppca_scores_the_scaled_data_as_pca_does():
    x = low_rank(2)
    pipe = make_pipeline(StandardScaler(), PPCA(3)).fit(x)
    scaled = StandardScaler().fit_transform(x)
    np.testing.assert_allclose(pipe.score(x), PCA(3).fit(scaled).score(scaled), rtol=1e-5)
    assert pipe.transform(x).shape == (len(x), 3)


# ------------------------------------------------------------------ parameters and behaviour
def test_params_map_onto_card_keys_and_clone_keeps_them():
    est = GMM(4, covariance_type="diag", max_iter=7, n_init=2, random_state=3, verbose=1)
    card = est._card()
    assert (card.model.components, card.model.covariance, card.training.epochs) == (4, "diag", 7)
    assert (card.training.restarts, card.training.seed, card.training.progress) == (2, 3, True)
    assert GMM()._card().training.progress is False  # quiet unless asked
    twin = clone(est.set_params(n_components=2))
    assert twin.get_params() == est.get_params() and twin._card().model.components == 2
    with pytest.raises(pplvm.CardError, match=r"n_components \(model.components\)"):
        GMM(n_components=0).fit(mixture())
    assert VAE(hidden=(8, 4))._card().model.hidden == [8, 4]
    card = CardEstimator("models/gmm_iris.toml", overrides={"model.components": 5}, random_state=9)._card()
    assert (card.model.components, card.training.seed, card.data.valid_fraction) == (5, 9, 0.2)


def test_methods_follow_the_familys_declarations():
    assert hasattr(GMM(), "predict") and not hasattr(GMM(), "transform")
    assert hasattr(PPCA(), "transform") and not hasattr(PPCA(), "predict")
    assert hasattr(HMM(), "predict_proba") and hasattr(VAE(), "transform")
    gan = CardEstimator({"model": {"family": "gan", "latent_dim": 2}})
    assert not hasattr(gan, "score") and not hasattr(gan, "predict") and not hasattr(gan, "transform")
    with pytest.raises(pplvm.PplvmError, match="^lengths: this estimator's family takes rows"):
        GMM(2).fit(mixture(), lengths=[300])


def test_gmm_sample_returns_rows_and_the_components_that_drew_them():
    est = GMM(3, random_state=0).fit(mixture())
    x, y = est.sample(3000)
    assert x.shape == (3000, 2) and y.shape == (3000,)
    for k in range(3):  # each component's draws centre on its mean (sd ≤ 1: 3 standard errors ≈ 0.1)
        np.testing.assert_allclose(x[y == k].mean(0), est.means_[k], atol=0.15)
    np.testing.assert_array_equal(est.sample(5)[0], est.sample(5)[0])  # seeded by random_state


def test_vae_is_an_estimate_that_repeats_and_transforms():
    x = low_rank(3, n=120)
    est = VAE(2, hidden=(16,), max_epochs=3, importance_samples=16, random_state=0).fit(x)
    assert est.likelihood_ == "estimate" and est.transform(x).shape == (120, 2)
    first = est.score(x)
    assert np.isfinite(first) and est.score(x) == first
    assert est.sample(4)[1] is None


def test_pickle_and_run_dir(tmp_path, monkeypatch):
    x = mixture()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    GMM(3).fit(x).score(x)
    assert not list((tmp_path / "cwd").iterdir())  # nothing written unless asked
    est = GMM(3, random_state=0, run_dir=tmp_path / "run").fit(x)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.score_samples(x), est.score_samples(x))
    loaded = pplvm.load(tmp_path / "run")  # the run directory asked for, as pplvm writes it
    np.testing.assert_allclose(loaded.log_likelihood(x).numpy(), est.score_samples(x), rtol=1e-6)


def test_import_pplvm_does_not_import_the_estimators():
    code = "import sys, pplvm; print('pplvm.sklearn' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
