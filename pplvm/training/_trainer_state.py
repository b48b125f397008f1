"""What resuming a :class:`~pplvm.training.trainer.Trainer` needs: the loop's
:class:`TrainState`, the trainer's state dict (parameters, the update rule's state, every RNG
stream, the best parameters, extras; tensors on the host), when a checkpoint is due, and the
metric history read back from ``metrics.jsonl``. The file format is :mod:`.checkpoint`'s."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import RunDirError
from ..sections import TrainingConfig
from . import distributed
from .checkpoint import load_checkpoint

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class TrainState:
    """Everything besides parameters that resuming needs (the history lives in metrics.jsonl)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float = math.inf  # best monitored held-out value, as a loss (lower is better)
    best_epoch: int = 0
    bad_epochs: int = 0  # evaluations since the best one
    stopped: str = ""  # why training ended early, if it did
    paused: bool = False  # stopped by a budget (max_steps, max_minutes): a resume goes on
    position: int = 0  # steps done in the epoch under way (a checkpoint inside an epoch)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_checkpoint(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "history"}


def read_history(run_dir: Path, epochs: int, *, whole: bool = True) -> list[dict[str, Any]]:
    """The first ``epochs`` per-epoch records of ``run_dir/metrics.jsonl`` (one per epoch).

    ``whole``: refuse a file that lacks any of them (a resume rewrites the file from them);
    otherwise (loading a run to evaluate or sample, which need no history) the records that
    can be read are returned and a damaged or short file costs only the lost ones."""
    path = Path(run_dir) / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    try:
        lines, damaged = path.read_bytes().splitlines()[:epochs], None
    except OSError as err:
        lines, damaged = [], f"cannot be read ({err.strerror or err})"
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or record.get("epoch") != i:
            damaged = damaged or f"line {i} is not epoch {i}'s record of metrics"
            continue
        history.append(record)
    if whole and (damaged or len(history) < epochs):
        why = damaged or f"has {len(history)} epochs of metrics but the checkpoint has {epochs}"
        raise RunDirError(
            f"{str(path)!r} {why}: the run's metric history is damaged, not its checkpoint, so "
            "evaluate and sample still work, but a resume would continue a history it cannot rewrite; "
            "fit a new run to train further"
        )
    return history


def rewrite_history(run_dir: Path, epochs: int) -> list[dict[str, Any]]:
    """A resume's history: the first ``epochs`` records of ``metrics.jsonl`` (:func:`read_history`),
    written back without those logged after the checkpoint (a budget stop's partial record
    stays until the resumed fit logs its next record: :func:`pplvm.training._budget.record`)."""
    history = read_history(run_dir, epochs)
    (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    return history


def logged_epochs(ckpt: dict[str, Any]) -> int:
    """Records of ``metrics.jsonl`` that belong to the checkpoint ``ckpt``: one per epoch done,
    and the partial record of a budget stop inside the next."""
    state = ckpt["trainer"]
    return int(state["epoch"]) + (1 if state.get("position") and state.get("paused") else 0)


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """:meth:`Trainer.state_dict`: everything a checkpoint of ``trainer`` holds; inside an
    epoch (``position`` > 0), the shuffle's state before the epoch's draw and its running loss."""
    within = trainer.state.position > 0
    return {
        "model": _host(trainer.model.state_dict()),
        "guide": _host(trainer.guide.state_dict()),
        "rule": _host(trainer.rule.state_dict()),
        "trainer": trainer.state.to_checkpoint(),
        "rng": {
            "torch": torch.get_rng_state(),
            "shuffle": trainer._epoch_start if within else trainer.shuffle.get_state(),
            "augment": trainer.augment_rng.get_state(),
            **({"torch_ranks": trainer._rng_ranks} if trainer._rng_ranks is not None else {}),
        },
        "best": trainer._best_params,
        "extras": trainer.extras,
        **({"epoch_loss": _host(trainer._epoch_loss)} if within else {}),
        **({"ema": trainer.ema.state_dict()} if trainer.ema is not None else {}),
        "kept": trainer.kept,
    }


def load_state_dict(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """:meth:`Trainer.load_state_dict`: ``trainer`` as the checkpoint ``ckpt`` left it."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.guide.load_state_dict(ckpt["guide"])
    trainer.rule.load_state_dict(ckpt["rule"])
    trainer.state = TrainState(**ckpt["trainer"])
    if trainer.state.paused:  # a budget stopped it: this resume goes on
        trainer.state.stopped, trainer.state.paused = "", False
    ranks = ckpt["rng"].get("torch_ranks")  # written by a run on several processes
    if ranks is not None and trainer.rank < len(ranks):
        torch.set_rng_state(ranks[trainer.rank].clone())  # a view at an offset crashes torch 2.13
    elif trainer.rank == 0:
        torch.set_rng_state(ckpt["rng"]["torch"])
    else:  # more processes than the run had: a fresh stream of this process's own
        torch.manual_seed(distributed.rank_seed(trainer.config.seed + trainer.state.step, trainer.rank))
    trainer.shuffle.set_state(ckpt["rng"]["shuffle"])
    trainer.augment_rng.set_state(ckpt["rng"]["augment"])
    trainer._best_params = ckpt.get("best")
    if trainer.state.position:  # inside an epoch: its shuffle is drawn again from here
        trainer._epoch_start = trainer.shuffle.get_state()
        trainer._epoch_loss = ckpt["epoch_loss"] if trainer.rank == 0 else None  # (the processes' sum)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(ckpt["ema"])


def checkpoint_due(config: TrainingConfig, state: TrainState, last_save: float) -> bool:
    """Whether the epoch just done ends with a checkpoint (see :mod:`.trainer`)."""
    if state.epoch == config.epochs or state.stopped:
        return True
    if config.checkpoint_every is not None:
        return state.epoch % config.checkpoint_every == 0
    return time.monotonic() - last_save >= config.checkpoint_seconds


def saved_epoch(path: Path) -> int:
    """The epoch of the checkpoint at ``path`` (0 when there is none readable)."""
    try:
        return int(load_checkpoint(path)["trainer"]["epoch"])
    except RunDirError:
        return 0


def _host(tree: Any) -> Any:
    """A copy of a state tree with every tensor on the CPU (checkpoints are device-free)."""
    if torch.is_tensor(tree):
        return tree.detach().to("cpu")
    if isinstance(tree, dict):
        return {k: _host(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_host(v) for v in tree)
    return tree
