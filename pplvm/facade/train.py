"""Training a run: :meth:`~pplvm.run.Run.fit` into a new run directory, and
:meth:`~pplvm.run.Run.resume` from one, through one :class:`~pplvm.training.trainer.Trainer`.

Each function here is one of :class:`~pplvm.run.Run`'s methods (``run`` is the run;
``cls`` for a class method); the loop itself lives in :mod:`pplvm.training`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from pydantic import BaseModel

from .. import rundir
from .._allocator import reusing_memory
from .._targets import described
from ..config import card_from_dict, card_to_dict, check_count, dump_card, load_card
from ..data import Batch
from ..errors import ArgumentError, CardError, PplvmError, RunDirError, TrainingError
from ..training import distributed
from ..training.checkpoint import load_checkpoint
from ..training.trainer import Callback, Trainer
from . import restarts, tracking
from .build import PROTOTYPE_ROWS, _fit_input, _matching, _to_state, seen_rows

if TYPE_CHECKING:
    from ..run import Run

#: environment variable capping the epochs each fit or resume runs (tests and smoke runs of
#: the shipped cards and README commands): ``PPLVM_MAX_EPOCHS=2 pplvm fit ...``
MAX_EPOCHS_ENV = "PPLVM_MAX_EPOCHS"


def fit(run: Run, out: str | Path | None = None, *, overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> Run:
    """Train as the card's ``[training]`` says; with ``out``, write a run directory.

    The directory is locked while the fit writes it (a second fit into it is refused). Started
    by torchrun (several processes), every process trains on its shard of each batch and rank 0
    alone prepares, locks and writes the run directory (see :mod:`pplvm.training.distributed`).

    Args:
        out: the run directory to write: new or empty, unless ``overwrite``; None trains in
            memory only.
        overwrite: delete the files of a run already in ``out`` first.
        callbacks: functions called as ``callback(trainer, metrics)`` after every epoch.

    Returns:
        The run itself, fitted (its best parameters where it stopped early).

    Raises:
        RunDirError: ``out`` holds a run (without ``overwrite``) or is locked, or the run was
            loaded (continue it with :meth:`~pplvm.run.Run.resume`).
        TrainingError: training failed (e.g. a loss that stays non-finite).
    """
    if run.loaded:
        raise RunDirError("this run was loaded from its run directory; use Run.resume() to continue training")
    run.card = _epoch_cap(run.card, 0)
    main = distributed.init_from_env(run.card.training.device).is_main
    if out is None:
        return run._fit(callbacks)
    out = Path(out)
    with contextlib.ExitStack() as stack:
        with distributed.agreed("prepare the run directory"):
            new = None
            if main:
                new = stack.enter_context(rundir.new_run(out, overwrite=overwrite, need_bytes=run._disk_bytes()))
                with rundir.storage(f"run directory {str(out)!r}"):
                    dump_card(run.card, new.path / "card.toml")
                    (new.path / "metrics.jsonl").write_text("")
            run.run_dir = out / rundir.STAGING  # the new run, until its first epoch is done
        mirror = stack.enter_context(tracking.mirrored(run, out))  # logging.loggers: TensorBoard, MLflow

        def commit(trainer: Trainer, metrics: dict[str, Any]) -> None:
            """After the first epoch: the new run replaces ``out``'s old one (rank 0 moves it)."""
            if run.run_dir == out:
                return
            if new is not None:
                new.commit()
            trainer.run_dir = run.run_dir = out

        return run._fit([commit, *callbacks], mirror)


def _fit(run: Run, callbacks: Sequence[Callback], mirror: tracking.Tracking | None = None) -> Run:
    restarts.choose(run, _first_epoch)  # training.restarts > 1: the run then starts where the kept restart does
    run.trainer = run._trainer(callbacks)
    if mirror is not None:
        run.trainer.tracking = mirror
    with (
        rundir.storage(f"run directory {str(run.run_dir)!r}"),
        _first_epoch(run.trainer),
        reusing_memory(run.card.evaluation.memory_mb),  # steps reuse their freed activations
    ):
        run.trainer.fit(_fit_input(run.traits, run.dataset.train), run.dataset.valid)
    run.history = run.trainer.state.history
    if run.run_dir is not None and distributed.is_main():
        run.write_artifacts()
    return run


@contextlib.contextmanager
def _first_epoch(trainer: Trainer) -> Iterator[None]:
    """What the model, guide or objective raise before the first epoch is done (a user's model
    failing on a training batch, a shape no probe met) becomes one line naming the error and
    where the user's code raised it (the cause chained for Python). Later errors pass as they are."""
    try:
        yield
    except PplvmError:
        raise
    except (Exception, SystemExit) as err:
        if trainer.state.history:  # an epoch was done: its run directory is kept, the error is as it was
            raise
        raise TrainingError(f"training failed in its first epoch, before anything was kept: {described(err)}") from err


def _disk_bytes(run: Run) -> int:
    """About the disk space a fit or resume of ``run`` takes at its largest, sized from the
    model and the card: the checkpoint twice (the old one stands until the new one replaces
    it), each holding the parameters, the optimiser's two moments, the best parameters and the
    prototype rows; the arviz export (draws x chains of the global parameters, of the held-out
    log-likelihoods and of posterior-predictive replicates, the last bounded by a quarter of
    evaluation.memory_mb; one draw for a point estimate, none with evaluation.export = false);
    and the figures."""
    sizes = [t.numel() * t.element_size() for m in (run.model, run.guide) for t in m.state_dict().values()]
    params = sum(sizes)
    checkpoint = 4 * params + PROTOTYPE_ROWS * run.model.dim * 8 + 2**16
    ev = run.card.evaluation
    chains, per_chain = run._export_shape()
    draws = chains * per_chain if ev.export else 0
    rows = min(ev.max_rows, len(run.dataset.train) if run.dataset is not None else ev.max_rows)
    replicates = min(draws * rows * run.model.dim * 4, int(ev.memory_mb * 2**20) // 4)
    export = draws * (params + rows * 4) + replicates
    return 2 * checkpoint + export + 2**21


def resume(
    cls: type[Run],
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    data: Any = None,
    callbacks: Sequence[Callback] = (),
    model: Any = None,
    guide: Any = None,
    objective: Any = None,
    loggers: Sequence[str] = (),
) -> Run:
    """Continue an interrupted run from its last checkpoint.

    The result equals an uninterrupted run with the same seed. Everything is checked before
    anything is written: ``card.toml`` is rewritten only once the checkpoint has loaded into the
    card's model.

    Args:
        run_dir: the run directory.
        epochs: a new total epoch budget (at least the epochs done).
        max_steps: a new budget of total steps (those done included).
        max_minutes: a budget of minutes for this resume (:mod:`pplvm.training._budget`).
        data: the data of a run fitted on data passed from Python (its directory keeps none).
        callbacks: functions called as ``callback(trainer, metrics)`` after every epoch.
        model: the model object the run was fitted with from Python, if any.
        guide: likewise its guide object.
        objective: likewise its objective object.
        loggers: trackers to mirror the run to besides the card's ``logging.loggers``
            (:mod:`pplvm.tracking`).

    Returns:
        The run, trained to its budget, its directory updated.

    Raises:
        RunDirError: ``run_dir`` holds no run, or is locked, or its checkpoint does not match its card.
        ArgumentError: ``epochs`` is below the epochs done.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "card.toml").is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a pplvm run directory (no card.toml)")
    main = distributed.init_from_env(load_card(run_dir / "card.toml").training.device).is_main
    with contextlib.ExitStack() as stack:
        with distributed.agreed("lock the run directory"):  # rank 0 locks and writes it; all read it
            if main:
                stack.enter_context(rundir.locked(run_dir))
            card = load_card(run_dir / "card.toml")
            ckpt = load_checkpoint(run_dir / "checkpoint.pt")
            rundir.check_fingerprint(ckpt["extras"].get("card"), card, run_dir)
            rundir.check_training_fingerprint(ckpt["extras"].get("training_card"), card, run_dir)
            if epochs is not None:
                done = int(ckpt["trainer"]["epoch"])
                if check_count(epochs, "epochs") < done:
                    raise ArgumentError(
                        f"epochs: {epochs} is fewer than the {done} epochs this run has done; "
                        f"expected a new total budget of at least {done}"
                    )
                card = card_from_dict(card_to_dict(card), {"training.epochs": epochs})
            budgets = {"training.max_steps": max_steps, "training.max_minutes": max_minutes}
            if any(v is not None for v in budgets.values()):
                card = card_from_dict(card_to_dict(card), {k: v for k, v in budgets.items() if v is not None})
            if loggers:
                card = with_loggers(card, loggers)
            if data is None and ckpt["extras"].get("from_python"):
                raise RunDirError("this run was fitted on data passed from Python; pass the same data= to resume")
            card = _epoch_cap(card, int(ckpt["trainer"]["epoch"]))
            run = cls.from_card(card, data, model=model, guide=guide, objective=objective)
            _check_data(ckpt["extras"].get("data"), _fit_input(run.traits, run.dataset.train), run_dir)
            run.run_dir = run_dir
            if main:
                rundir.check_writable(run_dir, run._disk_bytes())
        run.trainer = run._trainer(callbacks)
        train = _fit_input(run.traits, run.dataset.train)
        with _matching(run_dir), rundir.storage(f"run directory {str(run_dir)!r}"):
            run.trainer.resume(train)
        with tracking.mirrored(run, run_dir, run.trainer.state.history) as run.trainer.tracking:
            with rundir.storage(f"run directory {str(run_dir)!r}"), reusing_memory(card.evaluation.memory_mb):
                if main:
                    dump_card(card, run_dir / "card.toml")  # written last: the resume can go on
                run.trainer.fit(train, run.dataset.valid)
            run.history = run.trainer.state.history
            if main:
                run.write_artifacts()
    return run


def with_loggers(card: BaseModel, loggers: Sequence[str]) -> BaseModel:
    """``card`` with ``loggers`` added to its ``logging.loggers`` (``--logger``), each once."""
    names = list(dict.fromkeys([*card.logging.loggers, *loggers]))
    return card_from_dict(card_to_dict(card), {"logging.loggers": names})


def _trainer(run: Run, callbacks: Sequence[Callback]) -> Trainer:
    d = run.dataset
    extras = {
        "dim": run.model.dim,
        "transform": run.transform.state_dict(),
        "prototype": _to_state(_fit_input(run.traits, seen_rows(d, run.seed))),
        "num_train": len(d.train),
        "from_python": bool(d.info.get("from_python")),
        "card": rundir.card_fingerprint(run.card),
        "training_card": rundir.training_fingerprint(run.card),
        "data": data_fingerprint(_fit_input(run.traits, d.train)),
    }  # what load and resume check card.toml (and resume the data) against
    # early stopping follows the exact held-out log-likelihood where the family has one,
    # else the held-out loss (a noisier Monte-Carlo estimate)
    # (also when the guide scores no held-out loss: a per-datum guide)
    monitor = "valid_log_likelihood" if run.model.likelihood == "exact" or not run.traits.held_out else "valid_loss"
    # a family without a likelihood ("none") is judged by its rule's held-out loss alone
    valid_metrics = run._valid_metrics if run.model.likelihood != "none" else None
    ctx = distributed.init_from_env(run.card.training.device)
    return Trainer(
        run.model,
        run.guide,
        run.rule,
        run.card.training.model_copy(update={"seed": run.seed}),  # the kept restart's (training.restarts)
        run_dir=run.run_dir,
        valid_metrics=valid_metrics,
        extras=extras,
        callbacks=callbacks,
        monitor=monitor,
        augment=d.augment,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def data_fingerprint(data: torch.Tensor | Batch) -> dict[str, Any]:
    """Rows, row shape and sha256 of a training split (every named tensor of a Batch)."""
    fields = data.fields() if isinstance(data, Batch) else {"x": data}
    digest = hashlib.sha256()
    for name, t in fields.items():
        if t is not None:
            t = t.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    x = fields["x"]
    return {"rows": len(x), "shape": list(x.shape[1:]), "sha256": digest.hexdigest()}


def _check_data(stored: dict[str, Any] | None, train: torch.Tensor | Batch, run_dir: Path) -> None:
    """Refuse to resume on training data other than the run's (``stored``: their fingerprint;
    None, a checkpoint written before it was kept, passes)."""
    now = data_fingerprint(train)
    if stored is None or now == stored:
        return

    def show(f: dict[str, Any]) -> str:
        return f"{f['rows']} rows of shape {tuple(f['shape'])}, sha256 {f['sha256'][:12]}"

    raise RunDirError(
        f"{str(run_dir)!r}: the training data are not those the run was trained on ({show(stored)} "
        f"then; {show(now)} now); resume on the same data, or fit a new run"
    )


def _valid_metrics(run: Run, valid: torch.Tensor) -> dict[str, float]:
    ll = run._chunked_log_likelihood(valid, run._params()) + run.transform.log_abs_det_jacobian(valid)
    out = {"valid_log_likelihood": float(ll.mean())}
    if run.model.likelihood == "estimate" and run.traits.held_out_steps:
        out["valid_q_fit_steps"] = run.traits.held_out_steps  # scored through a q(z_n) fitted to them
    return out


def _epoch_cap(card: BaseModel, done: int) -> BaseModel:
    """The card with ``training.epochs`` at most ``done`` + ``$PPLVM_MAX_EPOCHS`` when that
    variable is set (unchanged otherwise)."""
    cap = os.environ.get(MAX_EPOCHS_ENV)
    if not cap:
        return card
    if not cap.strip().isdigit() or int(cap) < 1:
        raise CardError(f"environment variable {MAX_EPOCHS_ENV}={cap!r}: expected a positive integer")
    if card.training.epochs <= done + int(cap):
        return card
    return card_from_dict(card_to_dict(card), {"training.epochs": done + int(cap)})
