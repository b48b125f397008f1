"""The interface every experiment tracker implements, and the registry trackers join by name.

A tracker mirrors a run directory into a tool people already watch (TensorBoard, MLflow): the
run directory stays the source of truth, and a tracker only copies what pplvm writes there — the
records of ``metrics.jsonl``, figures, text — as it is written. A tracker is one class in one
file: it names itself (``name``), declares its options (``Config``, the card's
``[logging.<name>]`` table) and implements the calls of :class:`Tracker`. It imports its
tool only when a run starts it (:func:`require`), so the tool is an optional dependency.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from .._registry import Registry
from ..errors import IncompatibleError
from ..schema import Section

#: every tracker by name: ``TRACKERS["tensorboard"]`` is its class
TRACKERS: Registry[type[Tracker]] = Registry("logger")

#: how a tracker's run ended: finished, failed on an error, killed (Ctrl-C, a signal)
Status = Literal["FINISHED", "FAILED", "KILLED"]

#: the optional dependencies' extra (pyproject.toml)
EXTRA = "pplvm[tracking]"


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told when a run starts mirroring.

    Attributes:
        run_dir: the run directory, in place (a tracker's own files, TensorBoard's events or
            MLflow's run id, go there: a new fit's trackers start once its first epoch is done).
        name: the card's name.
        card: the card as written to ``card.toml`` (a nested dict, unset values left out).
        card_text: ``card.toml``'s text.
        resumed_from: on a resume, the first step the resumed fit records again (what a
            tracker holds from that step on belonged to epochs the resume repeats); None on a
            new fit.
    """

    run_dir: Path
    name: str
    card: dict[str, Any]
    card_text: str
    resumed_from: int | None = None


class Tracker(abc.ABC):
    """Base of a tracker: a subclass names itself and is registered in :data:`TRACKERS`.

    The calls, in order: :meth:`start` once, then :meth:`log_metrics`, :meth:`log_figure`,
    :meth:`log_image` and :meth:`log_text` as the run writes its records (rank 0 only, under torchrun), and
    :meth:`finish` once. Steps are the run's optimiser steps (``metrics.jsonl``'s ``step``),
    which grow across a resume.
    """

    #: the name a card's ``logging.loggers`` and ``--logger`` use
    name: ClassVar[str]
    #: the package the tracker needs (imported by :func:`require`)
    needs: ClassVar[str]

    class Config(Section):
        """The tracker's options, the card's ``[logging.<name>]`` table."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            TRACKERS.register(cls.name)(cls)

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def start(self, run: RunInfo) -> bool:
        """Open (or, on a resume, reopen) the run's mirror; return whether it continues an
        earlier mirror of this run (False: a new one, to which the run's records so far are
        copied first)."""

    @abc.abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One record's numbers at ``step``."""

    @abc.abstractmethod
    def log_figure(self, name: str, figure: Any, step: int) -> None:
        """A matplotlib Figure (e.g. a grid of samples) at ``step``."""

    @abc.abstractmethod
    def log_image(self, name: str, path: Path, step: int) -> None:
        """An image file (the run's ``model.png``) at ``step``."""

    @abc.abstractmethod
    def log_text(self, name: str, text: str, step: int) -> None:
        """Text (Markdown: the card, a table) at ``step``."""

    @abc.abstractmethod
    def finish(self, run_dir: Path, status: Status) -> None:
        """Close the mirror; ``run_dir``: the run directory, complete when ``status`` is
        ``"FINISHED"`` (its files, ``model.png`` among them, are then written)."""


def require(tracker: type[Tracker]) -> Any:
    """Import the package ``tracker`` needs, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(tracker.needs)
    except ImportError:
        raise IncompatibleError(
            f"logging.loggers = {tracker.name!r} needs the {tracker.needs!r} package: pip install '{EXTRA}'"
        ) from None


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a ``metrics.jsonl`` record, but its ``step`` (the axis they are
    logged against): every number a tracker mirrors (flags and messages are left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
