"""The trackers of one run, as the trainer sees them: one object it hands each record to.

The trainer calls :meth:`Tracking.record` where it appends a record to ``metrics.jsonl`` (rank 0
only), and nowhere else; the facade makes the object (empty when the card names no logger, or on
a process other than rank 0) and calls :meth:`Tracking.finish` once the run directory is
complete. A mirror opens when the run directory holds a run: a new fit writes into a staging
folder until its first epoch is done, and what it records until then is held and handed over
once the run is in place (a fit that fails in its first epoch leaves no run behind, in its
directory or in a tracker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import RunInfo, Status, Tracker, numbers

log = logging.getLogger("pplvm")

#: ``views() -> (figures, texts)``: what is shown at each held-out evaluation beside the numbers
#: (``{"samples": Figure}``, ``{"likelihood_terms": "| term | ... |"}``)
Views = Callable[[], tuple[dict[str, Any], dict[str, str]]]


class Tracking:
    """The trackers a run mirrors its records to (none: every call does nothing).

    Args:
        trackers: the :class:`~pplvm.tracking.base.Tracker` objects, not started.
        run_dir: the run directory (None: the trainer's, at its first record).
        name: the card's name.
        card: the card as ``card.toml`` holds it (a nested dict); ``card_text``: its TOML text.
        views: what to show at each held-out evaluation (see :data:`Views`).
    """

    def __init__(
        self,
        trackers: Sequence[Tracker] = (),
        *,
        run_dir: Path | None = None,
        name: str = "",
        card: dict[str, Any] | None = None,
        card_text: str = "",
        views: Views | None = None,
    ):
        self.trackers = list(trackers)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.name, self.card, self.card_text, self.views = name, card or {}, card_text, views
        self.started = False
        self.last_step = 0
        self._history: list[dict[str, Any]] | None = None  # the records before this fit's (a resume's)
        self._held: list[tuple[Any, ...]] = []  # calls made before the run directory was in place

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, files: Path, history: Sequence[dict[str, Any]] = ()) -> None:
        """Begin: ``files``, the folder the run's files are written to now; ``history``, the
        run's records so far (a resume's), copied to a tracker that opens a new mirror. The
        trackers open now where ``files`` is the run directory (a resume), else at the first
        record written there (a new fit, after its first epoch)."""
        if not self.trackers:
            return
        self._history = [h for h in history if not h.get("partial")]
        if self.run_dir is None or Path(files) == self.run_dir:
            self._open(Path(files))

    def record(self, trainer: Any, metrics: dict[str, Any]) -> None:
        """Mirror the record ``metrics`` that ``trainer`` has just appended to its history and
        ``metrics.jsonl``; at the held-out evaluations (every ``training.eval_every`` epochs,
        the last and a stopping one), also the views."""
        if not self.trackers:
            return
        if self._history is None:  # a trainer used without the facade: its records so far
            self._history = [h for h in trainer.state.history[:-1] if not h.get("partial")]
        if not self.started and (self.run_dir is None or Path(trainer.run_dir) == self.run_dir):
            self._open(Path(trainer.run_dir))
        step = int(metrics["step"])
        self.last_step = step
        calls: list[tuple[Any, ...]] = [("log_metrics", step, numbers(metrics))]
        c = trainer.config
        evaluated = metrics["epoch"] % c.eval_every == 0 or metrics["epoch"] >= c.epochs or "stopped" in metrics
        if self.views is not None and evaluated and not metrics.get("partial"):
            try:
                figures, texts = self.views()
            except Exception as err:  # as a tracker's failure: the numbers go on, the pictures stop
                log.warning("the trackers' figures stopped (%s): %s", type(err).__name__, _first_line(err))
                self.views, figures, texts = None, {}, {}
            calls += [("log_figure", name, figure, step) for name, figure in figures.items()]
            calls += [("log_text", name, text, step) for name, text in texts.items()]
        if self.started:
            for call in calls:
                self._each(*call)
        else:
            self._held += calls

    def finish(self, run_dir: Path, status: Status) -> None:
        """Close every mirror; a finished run's graph picture (``model.png``) is shown first."""
        run_dir = Path(run_dir)
        if not self.started and status == "FINISHED" and self._held and run_dir == self.run_dir:
            self._open(run_dir)  # (a one-epoch fit: its record was held until now)
        if not self.started:
            return
        graph = run_dir / "model.png"
        if status == "FINISHED" and graph.is_file():
            self._each("log_image", "model", graph, self.last_step)
        self._each("finish", run_dir, status)
        self.started = False

    def _open(self, run_dir: Path) -> None:
        """Start each tracker on ``run_dir``; one that opens a new mirror of a resumed run gets
        the records so far; then the calls held until now. A tracker that cannot start (a store
        it cannot open) raises, after closing those started before it."""
        earlier = self._history or []
        info = RunInfo(
            run_dir=run_dir,
            name=self.name,
            card=self.card,
            card_text=self.card_text,
            resumed_from=int(earlier[-1]["step"]) + 1 if earlier else None,
        )
        continued: list[bool] = []
        for tracker in self.trackers:
            try:
                continued.append(bool(tracker.start(info)))
            except BaseException:
                for opened in self.trackers[: len(continued)]:
                    self._call(opened, "finish", run_dir, "FAILED")
                raise
        self.started = True
        for tracker, again in zip(list(self.trackers), continued):
            if not again:
                for h in earlier:
                    self._call(tracker, "log_metrics", int(h["step"]), numbers(h))
            # the card as this fit or resume trains it (a resume may change its budgets)
            step = info.resumed_from if again and info.resumed_from is not None else 0
            self._call(tracker, "log_text", "card", f"```toml\n{self.card_text}```", step)
        held, self._held = self._held, []
        for call in held:
            self._each(*call)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            self._call(tracker, method, *args)

    def _call(self, tracker: Tracker, method: str, *args: Any) -> Any:
        """A tracker's call; one that fails is dropped with one warning (the run directory, the
        run's record, goes on being written)."""
        if tracker not in self.trackers:
            return None
        try:
            return getattr(tracker, method)(*args)
        except Exception as err:  # a mirror's failure (a full disk, a locked store) does not stop training
            self.trackers.remove(tracker)
            log.warning("logger %r stopped mirroring this run (%s): %s", tracker.name, method, _first_line(err))
            return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
