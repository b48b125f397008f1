"""A Gaussian hidden Markov model as a scikit-learn estimator (hmmlearn's conventions), fitted by
exact EM (:mod:`pplvm.families.hmm`)."""

from __future__ import annotations

import numpy as np

from ._base import PplvmEstimator


class HMM(PplvmEstimator):
    """Hidden Markov model with diagonal-Gaussian emissions (``model.family = "hmm"``) fitted by
    maximum-likelihood EM (Baum–Welch), as hmmlearn's ``GaussianHMM(covariance_type="diag")``.
    Sequences are passed as hmmlearn takes them: their steps stacked as the rows of ``X`` and
    ``lengths=`` (one sequence when None) to ``fit``, ``score``, ``score_samples`` (one value
    per sequence), ``predict`` (Viterbi paths, stacked) and ``predict_proba``.

    Args:
        n_components: hidden states K (``model.states``).
        n_iter: EM iterations at most (``training.epochs``).
        tol: stop once an iteration raises the mean log-likelihood per sequence by less
            (``objective.em_tol``; hmmlearn's ``tol`` is this times the number of sequences).
        init_params: ``"kmeans"``, ``"kmeans++"``, ``"random"`` or ``"auto"`` (``model.init``).
        sample_length: steps of each sequence ``sample`` draws (``model.sample_length``).
        random_state, verbose, run_dir: as every estimator here.

    Fitted: ``startprob_`` ``(K,)``, ``transmat_`` ``(K, K)``, ``means_`` ``(K, D)``, ``covars_``
    ``(K, D)`` (the diagonal variances, as hmmlearn's ``covars_`` setter takes them)."""

    _card_base = {
        "model": {"family": "hmm", "emission": "gaussian"},
        "guide": {"kind": "map"},
        "objective": {"name": "em", "em_estimate": "ml"},
    }
    _card_keys = {
        "n_components": "model.states",
        "n_iter": "training.epochs",
        "tol": "objective.em_tol",
        "init_params": "model.init",
        "sample_length": "model.sample_length",
    }

    def __init__(
        self,
        n_components=1,
        *,
        n_iter=100,
        tol=1e-3,
        init_params="kmeans",
        sample_length=100,
        random_state=None,
        verbose=0,
        run_dir=None,
    ):
        self.n_components = n_components
        self.n_iter = n_iter
        self.tol = tol
        self.init_params = init_params
        self.sample_length = sample_length
        self.random_state = random_state
        self.verbose = verbose
        self.run_dir = run_dir

    def _fitted(self, run):
        p = {k: v.double().numpy() for k, v in run.params().items()}
        self.startprob_, self.transmat_, self.means_ = p["initial"], p["transition"], p["locs"]
        self.covars_ = np.square(p["scales"])
