"""pplvm: latent-variable generative models on Pyro.

Public API::

    import pplvm
    card = pplvm.load_card("models/gmm_iris.toml", ["model.components=4"])
    run = pplvm.fit(card, out="runs/iris")         # or pplvm.Run.from_card(card).fit()
    run.log_likelihood(x); run.posterior(x); run.sample(100); run.to_arviz()
    run = pplvm.load("runs/iris")

Parameters of pplvm's models and guides live in their modules, not in Pyro's global
parameter store (``pyro.settings.set(module_local_params=True)``, which importing pplvm
sets), so two models never share parameters by name and state_dicts hold everything.
"""

import pyro

pyro.settings.set(module_local_params=True)

from .config import card_from_dict, card_schema, card_to_dict, load_card  # noqa: E402
from .data import SOURCES, load_dataset  # noqa: E402
from .errors import (  # noqa: E402
    CardError,
    DataError,
    IncompatibleError,
    PplvmError,
    RunDirError,
    TrainingError,
)
from .families import FAMILIES, LatentVariableModel  # noqa: E402
from .guides import GUIDES, make_guide  # noqa: E402
from .objectives import OBJECTIVES, make_objective  # noqa: E402
from .run import Run, fit, load  # noqa: E402
from .training.trainer import Trainer  # noqa: E402

__version__ = "0.1.0"

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
