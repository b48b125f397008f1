"""Any model card as a scikit-learn estimator."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import CardError
from ._base import IN_MEMORY, PplvmEstimator, card_dict

#: what a card's ``[data]`` section keeps when its rows come from ``fit(X)``
SPLIT_KEYS = ("valid_fraction", "test_fraction", "split_seed", "standardize")


class CardEstimator(PplvmEstimator):
    """A card (a dict, a TOML path or a validated card object) as an estimator. ``fit(X)`` fits
    the card's model, guide, objective and training on the rows of ``X`` instead of the card's
    data source, with the card's split settings (``data.valid_fraction`` holds rows out for
    early stopping, ``data.standardize``); ``score`` is in the data's own units. Which methods
    it has follows the card's family (see :mod:`pplvm.sklearn`).

    Args:
        card: the card; stored as given (``clone`` copies it).
        overrides: dotted card keys -> values applied on top, e.g. ``{"training.lr": 0.01,
            "model.components": 4}``: what ``GridSearchCV`` varies
            (``param_grid={"overrides": [{"model.components": k} for k in (2, 3, 4)]}``).
        random_state: ``training.seed`` (None: the card's).
        verbose: a progress bar (``training.progress``).
        run_dir: None, or a folder the fit writes its run directory to."""

    def __init__(self, card=None, *, overrides=None, random_state=None, verbose=0, run_dir=None):
        self.card = card
        self.overrides = overrides
        self.random_state = random_state
        self.verbose = verbose
        self.run_dir = run_dir

    def _card_dict(self) -> dict[str, Any]:
        if self.card is None:
            raise CardError("card: expected a card (a dict, a TOML path or a validated card), got None")
        raw = dict(self.card) if isinstance(self.card, dict) and not isinstance(self.card, BaseModel) else None
        if raw is not None and "data" not in raw:
            raw["data"] = dict(IN_MEMORY)
        raw = card_dict(raw if raw is not None else self.card)
        raw["data"] = {**IN_MEMORY, **{k: raw["data"][k] for k in SPLIT_KEYS if k in raw["data"]}}
        return raw

    def _overrides(self) -> dict[str, Any]:
        if self.overrides is not None and not isinstance(self.overrides, dict):
            raise CardError(f"overrides: expected a dict of dotted card keys -> values, got {self.overrides!r}")
        return {**(self.overrides or {}), **super()._overrides()}
