"""Hyperparameter sweeps of a card with Optuna (``pplvm sweep``; the ``sweep`` extra).

A sweep is an Optuna study kept in ``OUT/study.db`` (SQLite, through Optuna's RDB storage) and
named after the card, so it resumes where it left off and several processes started with the
same ``--out`` share it. Each trial is a normal run directory, ``OUT/trial-0007``, fitted through
:meth:`pplvm.Run.fit` with the swept keys set as ``--set`` would set them, and a ``trial.json``
beside its files that says how it ended.

- **Objective.** The held-out log-likelihood per datum (maximised) where the family has one
  (its declared ``likelihood`` kind is not ``"none"``), else the held-out loss (minimised); at
  the parameters the run is used with (the best held-out epoch's, their moving average with
  ``training.ema``). The card needs held-out data (``data.valid_fraction > 0`` or a valid split).
- **Pruning.** Every held-out evaluation is reported to the trial (a trainer callback); when
  the pruner (Optuna's ``MedianPruner`` by default) says so, the fit stops after that epoch
  (:meth:`pplvm.training.trainer.Trainer.stop`): the run directory's last ``metrics.jsonl``
  record, checkpoint and ``summary.txt`` say ``pruned``, and the trial is PRUNED.
- **Resume.** ``--trials N`` counts the trials that ended: completed, pruned, or failed with an
  error of their own (a diverged fit: ``trial.json`` and the study say why). A trial that was
  running when its sweep stopped is run again from the start, with its parameters, as a new
  trial in a new run directory (its own directory is left as it was): at once after Ctrl-C or
  SIGTERM, and, after a kill, once its heartbeat (written every ``heartbeat`` seconds) is
  ``2 * heartbeat`` seconds old (Optuna's ``RetryHeartbeatStaleTrialCallback``).
- **Outputs** at the end: ``OUT/best.toml`` (the card with the best trial's values, which
  ``pplvm fit`` takes), ``OUT/study.png`` (:mod:`._sweep_report`) and the table of trials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..config import card_from_dict, card_to_dict, check_count, check_seed, load_card
from ..errors import ArgumentError, CardError, IncompatibleError, PplvmError, TrainingError
from ..families import FAMILIES
from ..rundir import write_atomic
from ._search_space import Param, check_space, parse_space
from ._sweep_report import Sweep, _short, best_card_text, study_plot, trial_rows

STUDY_DB, BEST_CARD, PLOT, TRIAL_FILE = "study.db", "best.toml", "study.png", "trial.json"
#: what a sweep's folder may hold besides trial directories (anything else: not a sweep's folder)
OWN_FILES = {STUDY_DB, BEST_CARD, PLOT}
#: how many times a trial stopped by its sweep's end (a kill, Ctrl-C) is run again
RETRIES = 3


def _optuna():
    try:
        import optuna
    except ImportError:
        raise IncompatibleError("pplvm sweep needs Optuna: pip install 'pplvm[sweep]'") from None
    return optuna


def _median(optuna, startup: int, warmup: int):
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


def _no_pruning(optuna, startup: int, warmup: int):
    return optuna.pruners.NopPruner()


#: ``--pruner`` name -> ``f(optuna, startup_trials, warmup_epochs)`` building it
PRUNERS: dict[str, Callable[..., Any]] = {"median": _median, "none": _no_pruning}


def objective_metric(card) -> str:
    """What trials of ``card`` are judged by: ``valid_log_likelihood`` where its family declares a
    likelihood, else ``valid_loss``; with ``_ema`` where the run is used with EMA weights."""
    metric = "valid_loss" if FAMILIES[card.model.family].likelihood == "none" else "valid_log_likelihood"
    return metric + ("_ema" if card.training.ema is not None else "")


def finished(trials) -> list:
    """The trials ``--trials`` counts: completed, pruned, or failed by an error of their own."""
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") or "error" in t.user_attrs]


def run_sweep(
    card_path: str | Path,
    params: Sequence[str],
    *,
    trials: int,
    out: str | Path,
    overrides: Sequence[str] = (),
    seed: int = 0,
    pruner: str = "median",
    prune_startup: int = 2,
    prune_warmup: int = 0,
    heartbeat: int = 30,
    bars: bool = False,
    report: Callable[[str], None] | None = None,
) -> Sweep:
    """Run (or resume) the sweep of ``card_path`` over ``params`` (``KEY=KIND(ARGS)`` strings,
    :mod:`._search_space`) until ``trials`` trials have ended, in ``out``; ``overrides`` are
    fixed ``KEY=VALUE`` settings of every trial. ``report`` gets one line per trial; ``bars``:
    each trial shows its training progress (as ``training.progress`` says)."""
    card = load_card(card_path, list(overrides))
    raw, space = card_to_dict(card), parse_space(params, overrides)
    check_space(raw, space)
    check_count(trials, "--trials")
    check_seed(seed, "--seed")
    if pruner not in PRUNERS:
        raise ArgumentError(f"--pruner {pruner!r}: expected one of: {', '.join(PRUNERS)}")
    check_count(heartbeat, "--heartbeat")
    if prune_startup < 0 or prune_warmup < 0:
        raise ArgumentError("--prune-startup, --prune-warmup: expected counts of at least 0")
    optuna, out = _optuna(), _prepare(Path(out))
    metric = objective_metric(card)
    say = report or (lambda line: None)
    with _quiet(optuna):
        pruning = PRUNERS[pruner](optuna, prune_startup, prune_warmup)
        study, storage = _study(optuna, out, card, space, metric, seed, pruning, heartbeat)
        done = len(finished(study.get_trials(deepcopy=False)))
        verb = "maximising" if metric.endswith("log_likelihood") else "minimising"
        say(f"sweep {card.name!r} in {out / STUDY_DB}: {done} of {trials} trials done; {verb} {metric}")
        objective = _Objective(raw, space, out, metric, bars, say)
        try:
            if done < trials:
                study.optimize(objective, catch=(PplvmError,), callbacks=[_StopAt(trials)], gc_after_trial=False)
            return _finish(optuna, study, card, space, metric, out)
        except KeyboardInterrupt:
            _run_again(study, objective.current)
            raise
        except _Abort as err:
            raise err.error from None
        finally:
            storage.engine.dispose()  # its SQLite connections closed


class _Abort(Exception):
    """A trial found the whole sweep cannot go on (``error``): the sweep stops with it."""

    def __init__(self, error: PplvmError):
        super().__init__(str(error))
        self.error = error


class _StopAt:
    """Stop the study once ``n`` trials have ended (in any process sharing it)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, study, trial) -> None:
        if len(finished(study.get_trials(deepcopy=False))) >= self.n:
            study.stop()


class _Objective:
    """One trial: the card with the trial's values, fitted into its run directory, pruned from its
    held-out evaluations; its value is the metric at the parameters the run is used with."""

    def __init__(self, raw: dict, space: list[Param], out: Path, metric: str, bars: bool, say):
        self.raw, self.space, self.out, self.metric, self.bars, self.say = raw, space, out, metric, bars, say
        self.current = None  # the trial running in this process

    def __call__(self, trial) -> float:
        from optuna import TrialPruned

        self.current, start = trial, time.monotonic()
        values = {p.key: p.suggest(trial) for p in self.space}
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", run_dir.name)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        outcome: dict[str, Any] = {"trial": trial.number, "params": values, "metric": self.metric}
        try:
            value, pruned = self._fit(trial, values, run_dir)
        except PplvmError as err:
            line = " ".join(str(err).split())
            trial.set_user_attr("error", line)
            self._record(run_dir, {**outcome, "state": "failed", "error": line})
            self.say(f"trial {trial.number}: {shown} -> failed: {line} ({time.monotonic() - start:.1f}s)")
            raise
        took = f"({time.monotonic() - start:.1f}s)"
        if pruned is not None:
            self._record(run_dir, {**outcome, "state": "pruned", "value": value, "pruned_at_epoch": pruned})
            self.say(f"trial {trial.number}: {shown} -> pruned at epoch {pruned} ({self.metric} {value:.4g}) {took}")
            raise TrialPruned(f"pruned at epoch {pruned}")
        self._record(run_dir, {**outcome, "state": "complete", "value": value})
        self.say(f"trial {trial.number}: {shown} -> {self.metric} {value:.4f} {took}")
        return value

    def _fit(self, trial, values: dict[str, Any], run_dir: Path) -> tuple[float, int | None]:
        from ..run import Run

        card = card_from_dict(self.raw, {**values, **({} if self.bars else {"training.progress": False})})
        with _quiet_log():
            run = Run.from_card(card)
            if run.dataset.valid is None:
                raise _Abort(CardError("data: a sweep judges trials on held-out data; set data.valid_fraction > 0"))
            pruned: list[int] = []

            def prune(trainer, record: dict[str, Any]) -> None:
                if self.metric not in record:
                    return
                trial.report(record[self.metric], record["epoch"])
                if record["epoch"] < trainer.config.epochs and not trainer.state.stopped and trial.should_prune():
                    pruned.append(record["epoch"])
                    why = f"pruned by the sweep: {self.metric} = {record[self.metric]:.4g} at epoch {record['epoch']}"
                    trainer.stop(why, record)

            run.fit(run_dir, callbacks=[prune])
        records = [h for h in run.history if self.metric in h]
        if not records:
            raise _Abort(TrainingError(f"trial {trial.number} logged no held-out {self.metric} to judge it by"))
        if pruned:
            return float(records[-1][self.metric]), pruned[0]
        kept = run.trainer.state.best_epoch if run.trainer.kept == "best" else None
        value = float(next((h for h in records if h["epoch"] == kept), records[-1])[self.metric])
        if not math.isfinite(value):
            raise TrainingError(f"held-out {self.metric} is {value}")
        return value, None

    def _record(self, run_dir: Path, outcome: dict[str, Any]) -> None:
        """``trial.json`` in the trial's run directory (where the fit got far enough to keep one)."""
        if run_dir.is_dir():
            write_atomic(run_dir / TRIAL_FILE, json.dumps(outcome, indent=1, sort_keys=True) + "\n")


def _study(optuna, out: Path, card, space: list[Param], metric: str, seed: int, pruner, heartbeat: int):
    """The study in ``out`` and its storage: created, or loaded where it exists and is a sweep of
    the same card, space and objective (else an ArgumentError says what differs)."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    storage = RDBStorage(
        f"sqlite:///{(out / STUDY_DB).resolve()}",
        engine_kwargs={"connect_args": {"timeout": 60}},  # several processes wait on SQLite's lock
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
    )
    others = [n for n in optuna.get_all_study_names(storage) if n != card.name]
    if others:
        raise ArgumentError(f"--out {str(out)!r} holds the sweep of card {others[0]!r}; give this card another --out")
    direction = "maximize" if metric.endswith("log_likelihood") else "minimize"
    study = optuna.create_study(
        storage=storage, study_name=card.name, direction=direction, pruner=pruner, load_if_exists=True
    )
    spec = json.loads(json.dumps({"card": card_to_dict(card), "space": [p.text for p in space], "metric": metric}))
    old = study.user_attrs.get("pplvm_sweep")
    if old is None:
        study.set_user_attr("pplvm_sweep", spec)
    elif old != spec:
        what = " and ".join(k if k != "space" else "--param" for k in spec if old.get(k) != spec[k])
        raise ArgumentError(
            f"--out {str(out)!r} holds a sweep of {card.name!r} with another {what}; resume it with the same card, "
            "--set and --param, or give another --out"
        )
    starts = int(study.user_attrs.get("pplvm_starts", 0))  # each start (a resume) draws afresh
    study.set_user_attr("pplvm_starts", starts + 1)
    study.sampler = optuna.samplers.TPESampler(seed=(seed + starts) % 2**32)
    return study, storage


def _run_again(study, trial) -> None:
    """Queue ``trial``'s parameters again where it was stopped by an interrupt (FAIL without an
    error of its own), as a kill's stale trial is queued again by its heartbeat."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if trial is None:
        return
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    if frozen.state.name == "FAIL" and "error" not in frozen.user_attrs:
        RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)(study, frozen)


def _finish(optuna, study, card, space: list[Param], metric: str, out: Path) -> Sweep:
    """The study's table, best card, plot and parameter importances."""
    from ..evaluation.plots import save_figure

    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials)
    best = next((r for r in rows if r["trial"] == study.best_trial.number), None) if _complete(trials) else None
    best_card = None
    if best is not None:
        best_card = out / BEST_CARD
        write_atomic(best_card, best_card_text(card, best, metric, out))
    direction = "maximize" if metric.endswith("log_likelihood") else "minimize"
    save_figure(study_plot(rows, space, metric, direction), out / PLOT)
    importances = {}
    if len(_complete(trials)) >= 2:
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        with contextlib.suppress(ValueError, RuntimeError):  # too few distinct values to tell
            importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return Sweep(card.name, out, metric, direction, rows, best, best_card, out / PLOT, dict(importances))


def _complete(trials) -> list:
    return [t for t in trials if t.state.name == "COMPLETE"]


def _prepare(out: Path) -> Path:
    """``out``, made; refused where it holds anything but a sweep's files (a run directory, say)."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {str(out)!r} is a file; expected a folder for the sweep")
    if out.is_dir():
        foreign = sorted(
            p.name
            for p in out.iterdir()
            if p.name not in OWN_FILES
            and not (p.name.startswith("trial-") and p.is_dir())
            and not p.name.startswith(".")
        )
        if foreign:
            raise ArgumentError(
                f"--out {str(out)!r} holds files that are not a sweep's ({', '.join(foreign[:3])}); give a new folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _quiet(optuna) -> Iterator[None]:
    """Optuna's own log lines and experimental-feature warnings off: the sweep reports each trial."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def _quiet_log() -> Iterator[None]:
    """pplvm's INFO lines (each fit's first-epoch time) off inside a trial; warnings stay."""
    logger = logging.getLogger("pplvm")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
