"""Factor analysis as a scikit-learn estimator (:mod:`pplvm.families.linear_gaussian`)."""

from __future__ import annotations

from ._linear import LinearGaussianEstimator


class FA(LinearGaussianEstimator):
    """Factor analysis (``model.family = "fa"``): ``x = W z + μ + ε``, ``ε ~ N(0, diag ψ)``, by
    maximum-likelihood EM, as scikit-learn's ``FactorAnalysis``.
    Parameters and fitted attributes as :class:`PPCA`'s, but ``noise_variance_`` is ψ ``(D,)``."""

    _card_base = {
        "model": {"family": "fa"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
    }
