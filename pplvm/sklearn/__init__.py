"""scikit-learn estimators over pplvm's families: ``fit`` / ``score`` / ``sample`` / ``predict``
/ ``transform``, ``get_params`` mapped onto card keys, ``clone``, ``Pipeline`` and
``GridSearchCV``. Import it explicitly (``import pplvm`` does not)::

    from pplvm.sklearn import GMM
    GMM(n_components=3, random_state=0).fit(X).score(X)   # mean exact log-likelihood per row

Estimators: :class:`GMM`, :class:`HMM` (sequences with ``lengths=``, as hmmlearn), :class:`PPCA`,
:class:`FA`, :class:`VAE`, and :class:`CardEstimator` for any card. Each fits in memory through
:meth:`pplvm.Run.from_card` and keeps the :class:`~pplvm.Run` as ``run_``. Which methods an
estimator has is asked of its family's declarations (see ``PplvmEstimator``).
See docs/integrations/sklearn.md.
"""

from __future__ import annotations

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .card import CardEstimator
from .fa import FA
from .gmm import GMM
from .hmm import HMM
from .ppca import PPCA
from .vae import VAE

__all__ = ["FA", "GMM", "HMM", "PPCA", "VAE", "CardEstimator"]
