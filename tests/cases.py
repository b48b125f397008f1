"""Small cards, one or more per family, for the contract suite (tests/test_contract.py).

Every family joins the suite by adding its cases here; the suite has no per-family code.
Each case is a complete card dict small enough to fit in a second or two.
"""

from __future__ import annotations

import pytest

FAST_TRAINING = {"epochs": 3, "lr": 0.05, "progress": False}
SMALL_EVAL = {"draws": 5, "chains": 2, "max_rows": 200}

CASES = [
    pytest.param(
        {"name": "gmm_diag", "model": {"family": "gmm", "components": 3, "covariance": "diag"},
         "guide": {"kind": "meanfield"}, "objective": {"name": "enum"},
         "data": {"source": "synthetic_gmm", "n": 120, "dim": 2, "components": 3},
         "training": FAST_TRAINING, "evaluation": SMALL_EVAL},
        id="gmm-diag-meanfield",
    ),
    pytest.param(
        {"name": "gmm_full", "model": {"family": "gmm", "components": 2, "covariance": "full"},
         "guide": {"kind": "map"}, "objective": {"name": "enum"},
         "data": {"source": "iris", "standardize": True},
         "training": {**FAST_TRAINING, "batch_size": 40}, "evaluation": SMALL_EVAL},
        id="gmm-full-map-minibatch",
    ),
    pytest.param(
        {"name": "ppca_ml", "model": {"family": "ppca", "latent_dim": 2},
         "guide": {"kind": "exact"}, "objective": {"name": "elbo"},
         "data": {"source": "wine", "standardize": True},
         "training": FAST_TRAINING, "evaluation": SMALL_EVAL},
        id="ppca-ml-exact",
    ),
    pytest.param(
        {"name": "fa_bayes", "model": {"family": "fa", "latent_dim": 1, "prior": "normal", "encoder": "mlp",
                                       "hidden": 8},
         "guide": {"kind": "amortized"}, "objective": {"name": "elbo"},
         "data": {"source": "iris", "standardize": True},
         "training": {**FAST_TRAINING, "batch_size": 40}, "evaluation": SMALL_EVAL},
        id="fa-bayes-amortized-minibatch",
    ),
]
