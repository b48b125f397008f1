"""Probabilistic PCA as a scikit-learn estimator (:mod:`pplvm.families.linear_gaussian`)."""

from __future__ import annotations

from ._linear import LinearGaussianEstimator


class PPCA(LinearGaussianEstimator):
    """Probabilistic PCA (``model.family = "ppca"``): ``x = W z + μ + ε``, ``ε ~ N(0, σ² I)``, by
    maximum-likelihood EM. ``score`` is the exact log-likelihood, the quantity scikit-learn's
    ``sklearn.decomposition.PCA.score`` computes at the closed-form maximum (Tipping &
    Bishop).

    Args: ``n_components`` (L < n_features, ``model.latent_dim``), ``max_iter``
    (``training.epochs``), ``tol`` (``objective.em_tol``), ``init`` (``"pca"`` | ``"random"``,
    ``model.init``), ``noise_floor`` (``model.noise_floor``), ``random_state``, ``verbose``, ``run_dir``.

    Fitted: ``components_`` ``(L, D)`` (the loadings Wᵀ), ``mean_`` ``(D,)``, ``noise_variance_``
    σ² (a float)."""

    _card_base = {
        "model": {"family": "ppca"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
    }

    @staticmethod
    def _noise(variances):
        return float(variances[0])
