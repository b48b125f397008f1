"""Workflows over fitted runs, above the :mod:`pplvm.run` facade: model comparison by
PSIS-LOO (:mod:`.compare`) and simulation-based calibration (:mod:`.sbc`)."""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
