"""Workflows over fitted runs, above the :mod:`pplvm.run` facade: model comparison by
PSIS-LOO (:mod:`.compare`) and simulation-based calibration (:mod:`.sbc`)."""
