"""Inference algorithms over a Pyro model and guide that no family owns, beside the
objectives: the importance-sampled log-likelihood with the guide as proposal."""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .importance import DEFAULT_MAX_ELEMENTS, ImportanceEstimate, importance_log_likelihood

__all__ = ["DEFAULT_MAX_ELEMENTS", "ImportanceEstimate", "importance_log_likelihood"]
