"""Workflows over fitted runs, above the :mod:`pplvm.run` facade: model comparison by
PSIS-LOO (:mod:`.compare`), simulation-based calibration (:mod:`.sbc`) and the latent-space
tools of an amortized run (:mod:`.latent`)."""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
