"""Experiment tracking: a run mirrored to TensorBoard or MLflow as it trains.

The card's ``[logging]`` section names the trackers (``loggers = ["tensorboard", "mlflow"]``, or
``pplvm fit CARD --logger tensorboard``) and holds each one's options in its own table
(``[logging.mlflow]``). The run directory stays the run's record; the trackers mirror it (see
:mod:`pplvm.tracking.base` for what a tracker implements, :mod:`pplvm.tracking.connector` for how the
trainer feeds them).
Their packages are optional: ``pip install 'pplvm[tracking]'``.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, create_model

from ..schema import Section
from . import mlflow, tensorboard  # noqa: F401  (each registers itself)
from .base import TRACKERS, RunInfo, Tracker, require
from .connector import Tracking


@functools.cache
def logging_schema() -> type[Section]:
    """The card's ``[logging]`` section: ``loggers``, the trackers' names, and one table of
    options per registered tracker (its ``Config``)."""
    names = tuple(TRACKERS)
    return create_model(
        "LoggingConfig",
        __base__=Section,
        __module__=__name__,
        loggers=(
            list[Literal[names]],
            Field(
                [],
                description='the experiment trackers the run is mirrored to, e.g. ["tensorboard", "mlflow"] '
                "(pplvm fit / resume --logger adds to them); the run directory stays the run's record",
            ),
        ),
        **{
            name: (tracker.Config, Field(tracker.Config(), description=f"options of the {name} tracker"))
            for name, tracker in TRACKERS.items()
        },
    )


__all__ = ["TRACKERS", "RunInfo", "Tracker", "Tracking", "logging_schema", "require"]
