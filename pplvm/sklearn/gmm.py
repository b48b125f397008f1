"""A Gaussian mixture as a scikit-learn estimator, fitted by exact EM (:mod:`pplvm.families.gmm`)."""

from __future__ import annotations

import numpy as np

from ..errors import CardError
from ._base import PplvmEstimator


class GMM(PplvmEstimator):
    """Gaussian mixture (``model.family = "gmm"``) fitted by maximum-likelihood EM, as
    scikit-learn's ``GaussianMixture`` fits it; the assignments are its
    enumerated local latent, so it has ``predict`` / ``predict_proba``.

    Args:
        n_components: mixture components K (``model.components``).
        covariance_type: ``"full"`` or ``"diag"`` (``model.covariance``).
        tol: stop once an EM iteration raises the mean log-likelihood per row by less
            (``objective.em_tol``; scikit-learn's ``tol``).
        reg_covar: added to each full covariance's diagonal (``model.reg_covar``).
        max_iter: EM iterations at most (``training.epochs``).
        n_init: initialisations, the best kept (``training.restarts``).
        init_params: ``"kmeans"``, ``"kmeans++"``, ``"random"`` or ``"auto"`` (``model.init``).
        random_state: ``training.seed`` (None: the card's, 0).
        verbose: a progress bar (``training.progress``).
        run_dir: None, or a folder the fit writes its run directory to.

    Fitted: ``weights_`` ``(K,)``, ``means_`` ``(K, D)``, ``covariances_`` ``(K, D, D)`` (full) or
    ``(K, D)`` (diag), as scikit-learn names them; ``run_``, ``likelihood_`` (``"exact"``)."""

    _card_base = {
        "model": {"family": "gmm"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
    }
    _card_keys = {
        "n_components": "model.components",
        "covariance_type": "model.covariance",
        "tol": "objective.em_tol",
        "reg_covar": "model.reg_covar",
        "max_iter": "training.epochs",
        "n_init": "training.restarts",
        "init_params": "model.init",
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        random_state=None,
        verbose=0,
        run_dir=None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.verbose = verbose
        self.run_dir = run_dir

    def _check_shape(self, n_samples, n_features):
        if self.covariance_type == "full" and n_features == 1:
            raise CardError(
                "covariance_type = 'full' needs n_features >= 2 (a correlation matrix); for n_features = 1 "
                "use covariance_type = 'diag', the same model"
            )

    def _fitted(self, run):
        p = {k: v.double() for k, v in run.params().items()}
        self.weights_ = p["weights"].numpy()
        self.means_ = p["locs"].numpy()
        if "corr_chol" in p:
            factor = p["scales"].unsqueeze(-1) * p["corr_chol"]
            self.covariances_ = (factor @ factor.transpose(-1, -2)).numpy()
        else:
            self.covariances_ = np.square(p["scales"].numpy())
