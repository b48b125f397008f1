"""The shared base of pplvm's scikit-learn estimators: a card built from the estimator's
parameters, fitted in memory through :meth:`pplvm.Run.from_card` / :meth:`~pplvm.Run.fit`, and
the fitted :class:`~pplvm.Run` queried for scores, samples, states and posterior means.

Which methods an estimator has follows what its family declares
(:class:`~pplvm.families.LatentVariableModel`): ``score`` / ``score_samples`` where it has a
likelihood (``likelihood != "none"``), ``predict`` / ``predict_proba`` where its local latents
are enumerated (``enumerated``), ``transform`` where they are continuous with a ``q(z | x)``
(:class:`~pplvm.families.base.ContinuousLatentModel`), and ``lengths=`` where a datum is a
sequence (``sequential``). Before a fit the family's class answers; after it, the fitted model
(a model of your own decides some of these when it is traced).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from pyro.poutine.messenger import Messenger
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _progress
from ..config import card_from_dict, card_to_dict
from ..data import Batch, as_sequences
from ..errors import ArgumentError, CardError, IncompatibleError, PplvmError
from ..families import FAMILIES
from ..families.base import ContinuousLatentModel
from ..run import Run
from ._state import run_from_state, run_state

#: the data section of every fit: the rows come from Python (``data=``), all of them train
IN_MEMORY = {"source": "file", "path": "<in memory>", "valid_fraction": 0.0, "test_fraction": 0.0}


def _declared(est: "PplvmEstimator"):
    """What answers the capability questions: the fitted model, else the family's class (None
    where the card cannot be read: the fit will say why)."""
    run = getattr(est, "run_", None)
    if run is not None:
        return run.model
    try:
        return FAMILIES[est._card().model.family]
    except PplvmError:
        return None


def _has_likelihood(est) -> bool:
    return getattr(_declared(est), "likelihood", "none") != "none"


def _has_discrete_locals(est) -> bool:
    return bool(getattr(_declared(est), "enumerated", False))


def _has_continuous_locals(est) -> bool:
    m = _declared(est)
    return m is not None and issubclass(m if isinstance(m, type) else type(m), ContinuousLatentModel)


class PplvmEstimator(DensityMixin, BaseEstimator):
    """Base of the estimators. A subclass declares the card it starts from (``_card_base``:
    family, guide, objective) and which card key each of its parameters sets (``_card_keys``);
    its ``__init__`` stores its arguments untouched (scikit-learn's convention: ``clone`` and
    ``get_params`` read them back). Every estimator also has ``random_state`` (``training.seed``;
    None keeps the card's), ``verbose`` (``training.progress``: a progress bar) and ``run_dir``
    (None: nothing is written; a folder: the fit writes a run directory there, replacing the one
    an earlier fit wrote).

    Fitted attributes: ``run_`` (the :class:`~pplvm.Run`), ``likelihood_`` (what ``score``
    returns: ``"exact"``, ``"estimate"`` or ``"bound"``), ``n_features_in_``, ``n_iter_`` (epochs
    run: EM iterations under ``objective.name = "em"``) and the family's own (``means_``, ...)."""

    _card_base: ClassVar[dict[str, Any]] = {}
    _card_keys: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ the card
    def _card_dict(self) -> dict[str, Any]:
        """The card before validation, as a nested dict (CardEstimator: the user's card)."""
        return {**self._card_base, "data": dict(IN_MEMORY)}

    def _overrides(self) -> dict[str, Any]:
        """Dotted card keys set by the estimator's parameters."""
        out = {key: _plain(getattr(self, name)) for name, key in self._card_keys.items()}
        out["training.progress"] = bool(self.verbose)
        seed = _seed(self.random_state)
        if seed is not None:
            out["training.seed"] = seed
        return out

    def _card(self) -> BaseModel:
        """The validated card; an invalid parameter is named as the estimator's and the card key's."""
        try:
            return card_from_dict(self._card_dict(), self._overrides())
        except CardError as err:
            raise CardError(_named(str(err), self._card_keys)) from None

    # ------------------------------------------------------------------ data
    def _data(self, X, lengths=None, *, reset: bool, y=None):
        """``X`` checked (scikit-learn's ``validate_data``: n_features_in_, feature names) and as
        the family takes it: rows ``(N, D)``, or sequences cut from the rows by ``lengths``
        (a ``y`` given to a sequence family is refused: hmmlearn's second argument is ``lengths``)."""
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=1)
        X = np.array(X, dtype=np.float32)  # a copy: torch refuses read-only (memory-mapped) arrays
        model = _declared(self)
        if not getattr(model, "sequential", False):
            if lengths is not None:
                raise ArgumentError("lengths: this estimator's family takes rows, not sequences; leave lengths out")
            return X
        if y is not None:
            raise ArgumentError("y: a sequence family takes no y; pass the sequences' lengths as lengths=")
        lengths = np.asarray([len(X)] if lengths is None else lengths)
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths < 1).any() or lengths.sum() != len(X):
            raise ArgumentError(
                f"lengths: expected positive integer sequence lengths that sum to the {len(X)} rows of X, got {lengths}"
            )
        return as_sequences(np.split(X, np.cumsum(lengths)[:-1]), "X")

    @staticmethod
    def _rows(values: torch.Tensor, data) -> np.ndarray:
        """Per-datum results as scikit-learn returns them: for sequences, the steps of every
        sequence one after another (hmmlearn's layout) without the padding."""
        if isinstance(data, Batch) and data.lengths is not None:
            values = torch.cat([v[: int(n)] for v, n in zip(values, data.lengths)])
        return values.numpy()

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, lengths=None):
        """Fit on the rows of ``X`` ``(n_samples, n_features)`` (sequences: their steps stacked,
        cut by ``lengths`` as hmmlearn does; one sequence when None); ``y`` is ignored."""
        for name in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, name)  # a refit starts afresh (the family is the card's, not the last fit's)
        card = self._card()
        data = self._data(X, lengths, reset=True, y=y)
        self._check_shape(len(data), self.n_features_in_)
        with _progress.reporting(bool(self.verbose)):  # the library's own bars, as the fit's
            run = Run.from_card(card, data=data)
            run.fit(self.run_dir, overwrite=True) if self.run_dir is not None else run.fit()
        run.trainer = None  # its optimiser and loop state: not needed to query the fit
        self.run_ = run
        self.likelihood_ = run.model.likelihood
        self.n_iter_ = len(run.history)
        self._fitted(run)
        return self

    def _check_shape(self, n_samples: int, n_features: int) -> None:
        """Refuse data the estimator's parameters cannot serve, in their names (before the fit)."""

    def _fitted(self, run: Run) -> None:
        """Set the family's own fitted attributes (``means_``, ``components_``, ...)."""

    # ------------------------------------------------------------------ queries
    @available_if(_has_likelihood)
    def score_samples(self, X, *, lengths=None) -> np.ndarray:
        """``log p(x_n | θ̂)`` per datum ``(n_samples,)`` (per sequence for sequences), of the
        kind ``likelihood_`` names: exact, an importance-sampling estimate or a bound."""
        check_is_fitted(self)
        data = self._data(X, lengths, reset=False)
        with self._seeded():
            return self.run_.log_likelihood(data).double().numpy()

    @available_if(_has_likelihood)
    def score(self, X, y=None, *, lengths=None) -> float:
        """Mean log-likelihood per row of ``X`` (for sequences: per step, their total over the
        rows; hmmlearn's ``score`` is that total)."""
        check_is_fitted(self)
        data = self._data(X, lengths, reset=False, y=y)
        with self._seeded():
            return float(self.run_.log_likelihood(data).double().sum()) / len(X)

    @available_if(_has_discrete_locals)
    def predict(self, X, *, lengths=None) -> np.ndarray:
        """The most probable state of the discrete local latent per row (sequences: the Viterbi
        path of each, stacked), ``(n_samples,)``."""
        check_is_fitted(self)
        data = self._data(X, lengths, reset=False)
        return self._rows(self.run_.map_states(data)[self._discrete_site()], data).astype(np.int64)

    @available_if(_has_discrete_locals)
    def predict_proba(self, X, *, lengths=None) -> np.ndarray:
        """Posterior probabilities of the discrete local latent per row, ``(n_samples, K)``."""
        check_is_fitted(self)
        data = self._data(X, lengths, reset=False)
        return self._rows(self.run_.posterior(data)[self._discrete_site()], data).astype(np.float64)

    @available_if(_has_continuous_locals)
    def transform(self, X) -> np.ndarray:
        """Posterior means ``E[z_n | x_n]`` of the continuous local latent, ``(n_samples, L)``."""
        check_is_fitted(self)
        return self.run_.posterior(self._data(X, reset=False))["loc"].double().numpy()

    @available_if(_has_continuous_locals)
    def fit_transform(self, X, y=None):
        """``fit(X)``, then ``transform(X)``: the training rows' posterior means ``(n_samples, L)``."""
        return self.fit(X, y).transform(X)

    def sample(self, n_samples: int = 1, *, seed: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(X, y)``: ``n_samples`` new rows ``(n_samples, n_features)`` from the fitted model and,
        as scikit-learn's GaussianMixture returns, the state of the discrete local latent that
        drew each row where the model draws one (a mixture's component), else None. A sequence
        family draws ``n_samples`` sequences of its ``sample_length`` steps, stacked as rows.
        ``seed``: default ``random_state`` (0 when that is None), so draws repeat."""
        check_is_fitted(self)
        if seed is None:
            seed = _seed(self.random_state) or 0
        sites = self.run_.model.discrete_sites
        with _Drawn(sites[0] if len(sites) == 1 else None) as drawn:
            x = self.run_.sample(n_samples, seed=seed)
        labels = None if drawn.value is None else drawn.value.reshape(-1).cpu().numpy().astype(np.int64)
        return x.reshape(-1, x.shape[-1]).double().numpy(), labels

    @contextlib.contextmanager
    def _seeded(self):
        """Draws of a query (an estimated likelihood's importance samples) from ``random_state``
        (0 when None), so the same call gives the same number; the global RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.random_state) or 0)
            yield

    def _discrete_site(self) -> str:
        sites = self.run_.model.discrete_sites
        if len(sites) != 1:
            raise IncompatibleError(
                f"predict: the model has {len(sites)} discrete local sites ({', '.join(sites)}); "
                "query them by name with run_.map_states(X) / run_.posterior(X)"
            )
        return sites[0]

    # ------------------------------------------------------------------ scikit-learn
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        if _has_continuous_locals(self):
            from sklearn.utils import TransformerTags

            tags.transformer_tags = TransformerTags()
        return tags

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with its run as plain state (the card as a dict, the weights): a Run's card
        class is built at run time and does not pickle itself."""
        state = dict(super().__getstate__())
        if "run_" in state:
            state["run_"] = run_state(state["run_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "run_" in state:
            state = {**state, "run_": run_from_state(state["run_"])}
        super().__setstate__(state)


class _Drawn(Messenger):
    """Keeps the value the model draws at the sample site ``site`` (None: keeps nothing)."""

    def __init__(self, site: str | None):
        super().__init__()
        self.site, self.value = site, None

    def _pyro_post_sample(self, msg) -> None:
        if msg["name"] == self.site and not msg["is_observed"]:
            self.value = msg["value"]


def _seed(random_state) -> int | None:
    """``training.seed`` for ``random_state``: an int as it is, a RandomState's next draw, None: None."""
    if random_state is None:
        return None
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _plain(value):
    """A parameter as a card takes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _named(message: str, keys: dict[str, str]) -> str:
    """A card error with each card key an estimator parameter sets named as that parameter too."""
    for name, key in keys.items():
        message = message.replace(f"{key}:", f"{name} ({key}):").replace(f"{key} =", f"{name} ({key}) =")
    return message


def card_dict(card) -> dict[str, Any]:
    """A card given as a validated object, a dict or a TOML path, as a nested dict."""
    from ..run import _as_card

    return card_to_dict(_as_card(card))
