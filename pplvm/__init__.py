"""pplvm: latent-variable generative models on Pyro.

Public API::

    import pplvm
    card = pplvm.load_card("models/gmm_iris.toml", ["model.components=4"])
    run = pplvm.fit(card, out="runs/iris")         # or pplvm.Run.from_card(card).fit()
    run.log_likelihood(x); run.posterior(x); run.sample(100); run.to_arviz()
    run = pplvm.load("runs/iris")

``import pplvm`` imports neither torch nor Pyro: each public name below is imported on first
use (PEP 562), so that ``pplvm --help`` answers at once. Parameters of pplvm's models and
guides live in their modules, not in Pyro's global parameter store
(``pyro.settings.set(module_local_params=True)``, which every pplvm module that imports Pyro
sets first, see :mod:`pplvm._pyro_settings`), so two models never share parameters by name
and state_dicts hold everything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CardError, DataError, IncompatibleError, PplvmError, RunDirError, TrainingError

if TYPE_CHECKING:  # what static tools see; at run time, _LAZY imports each on first use
    from .config import card_from_dict, card_schema, card_to_dict, load_card
    from .data import SOURCES, load_dataset
    from .families import FAMILIES, LatentVariableModel
    from .guides import GUIDES, make_guide
    from .objectives import OBJECTIVES, make_objective
    from .run import Run, fit, load
    from .training.trainer import Trainer

#: the package's version; pyproject.toml reads it from here
__version__ = "0.1.0"

#: public name -> the submodule that defines it
_LAZY = {
    "card_from_dict": ".config",
    "card_schema": ".config",
    "card_to_dict": ".config",
    "load_card": ".config",
    "SOURCES": ".data",
    "load_dataset": ".data",
    "FAMILIES": ".families",
    "LatentVariableModel": ".families",
    "GUIDES": ".guides",
    "make_guide": ".guides",
    "OBJECTIVES": ".objectives",
    "make_objective": ".objectives",
    "Run": ".run",
    "fit": ".run",
    "load": ".run",
    "Trainer": ".training.trainer",
}

#: submodules reachable as attributes of the package (``pplvm.data.as_sequences``), imported on
#: first use; ``_progress`` for ``with pplvm._progress.reporting():``
_SUBMODULES = {
    "_progress",
    "config",
    "data",
    "decoders",
    "distributions",
    "evaluation",
    "families",
    "guides",
    "inference",
    "objectives",
    "run",
    "rundir",
    "schema",
    "training",
    "workflows",
}

__all__ = [
    "FAMILIES",
    "GUIDES",
    "OBJECTIVES",
    "SOURCES",
    "CardError",
    "DataError",
    "IncompatibleError",
    "PplvmError",
    "RunDirError",
    "TrainingError",
    "LatentVariableModel",
    "Run",
    "Trainer",
    "card_from_dict",
    "card_schema",
    "card_to_dict",
    "fit",
    "load",
    "load_card",
    "load_dataset",
    "make_guide",
    "make_objective",
]


def __getattr__(name: str) -> Any:
    """A submodule, or a public name from its submodule, imported on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # which also sets it here
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
