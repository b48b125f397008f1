"""What PPCA and factor analysis share as estimators (:mod:`pplvm.families.linear_gaussian`):
maximum-likelihood EM from the PCA start, the loadings and noise as fitted attributes."""

from __future__ import annotations

from ..errors import CardError, DataError
from ._base import PplvmEstimator


class LinearGaussianEstimator(PplvmEstimator):
    """Base of :class:`~pplvm.sklearn.PPCA` and :class:`~pplvm.sklearn.FA`: ``x = W z + μ + ε``,
    ``z ~ N(0, I_L)``, fitted by maximum-likelihood EM; ``transform`` gives ``E[z | x]``.

    Args:
        n_components: latent dimension L < n_features (``model.latent_dim``).
        max_iter: EM iterations at most (``training.epochs``).
        tol: stop once an iteration raises the mean log-likelihood per row by less (``objective.em_tol``).
        init: ``"pca"`` (start at the principal subspace) or ``"random"`` (``model.init``).
        noise_floor: smallest noise standard deviation (``model.noise_floor``).
        random_state, verbose, run_dir: as every estimator here.

    Fitted: ``components_`` ``(L, D)`` (the loadings Wᵀ, as scikit-learn's FactorAnalysis),
    ``mean_`` ``(D,)``, ``noise_variance_`` (σ² for PPCA, ``(D,)`` ψ for FA)."""

    _card_keys = {
        "n_components": "model.latent_dim",
        "max_iter": "training.epochs",
        "tol": "objective.em_tol",
        "init": "model.init",
        "noise_floor": "model.noise_floor",
    }

    def __init__(
        self,
        n_components=1,
        *,
        max_iter=100,
        tol=1e-4,
        init="pca",
        noise_floor=1e-3,
        random_state=None,
        verbose=0,
        run_dir=None,
    ):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.noise_floor = noise_floor
        self.random_state = random_state
        self.verbose = verbose
        self.run_dir = run_dir

    def _check_shape(self, n_samples, n_features):
        if not isinstance(self.n_components, int):
            return  # the card names what it expects
        if self.n_components >= n_features:
            raise CardError(
                f"n_components = {self.n_components}: expected fewer latent dimensions than n_features = {n_features}"
            )
        if n_samples <= self.n_components:
            raise DataError(f"X: n_samples = {n_samples}; fitting n_components = {self.n_components} needs more rows")

    def _fitted(self, run):
        weight, loc, noise = (t.detach().cpu().double() for t in run.model.parameters_at(run.params()))
        self.components_ = weight.T.numpy()
        self.mean_ = loc.numpy()
        self.noise_variance_ = self._noise(noise.pow(2).numpy())

    @staticmethod
    def _noise(variances):
        return variances
