"""Pyro's global settings as pplvm needs them, applied on import.

Parameters of pplvm's models and guides live in their modules, not in Pyro's global parameter
store (``pyro.settings.set(module_local_params=True)``), so two models never share parameters
by name and state_dicts hold everything. ``import pplvm`` imports neither torch nor Pyro (the
command line answers ``--help`` without them), so every pplvm package or module that imports
Pyro imports this module first: whichever pplvm module a user imports to build a model or a
guide, the setting is on before it runs.
"""

import pyro

pyro.settings.set(module_local_params=True)
