"""Building a run: from a card (with its data) or from a run directory's checkpoint, through
one path (:func:`assemble`) that makes the model, checks the pairing once and makes the guide.

:func:`from_card` and :func:`load` are :class:`~pplvm.run.Run`'s class methods; the helpers
below also shape the data the trainer feeds and the checkpoint keeps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pydantic import BaseModel

from .. import rundir
from .._modes import evaluating
from .._targets import one_line
from ..config import card_from_dict, card_to_dict, load_card
from ..data import Batch, Dataset, Standardize, as_matrix, indexed, load_dataset
from ..data.base import from_dict, split
from ..data.images import check_image_shape
from ..errors import DataError, PplvmError, RunDirError
from ..families import FAMILIES, LatentVariableModel
from ..guides import guide_for, make_guide
from ..objectives import objective_for, settle
from ..training._ema import kept_weights
from ..training._trainer_state import logged_epochs
from ..training.checkpoint import load_checkpoint
from ..training.devices import resolve_device
from ..training.trainer import read_history, to_device

if TYPE_CHECKING:
    from ..run import Run

#: training rows the guide first sees (autoguides create their parameters) and a checkpoint keeps
PROTOTYPE_ROWS = 256


def from_card(
    cls: type[Run],
    card: BaseModel | dict | str | Path,
    data: Any = None,
    *,
    model: Any = None,
    guide: Any = None,
    objective: Any = None,
) -> Run:
    """Build a run (model, guide, objective) from a card, on its data or yours.

    Args:
        card: a validated card, a dict of its sections, or the path of a TOML card.
        data: instead of the card's data source: an ``(N, D)`` array, a
            :class:`~pplvm.data.Batch` of sequences, or a dict of arrays (the data under ``"x"``,
            labels ``"y"``, sequence ``"lengths"``, and named inputs a model of your own takes
            by name); split as the card's ``[data]`` says.
        model: your own Pyro model object for ``model.family = "pyro"`` (instead of
            ``model.target``).
        guide: your own guide object for that model (``guide.kind = "custom"``).
        objective: your own objective object (an Objective plugin, a Pyro ELBO class or instance,
            an UpdateRule class); the card's objective becomes ``objective.name = "custom"``.

    Returns:
        An unfitted :class:`~pplvm.run.Run` on the card's ``training.device``, its parameters
        started from ``training.seed``.

    Raises:
        CardError: a card value is invalid.
        DataError: the data do not fit the model (columns, support, sequences given as rows).
        IncompatibleError: the card's guide or objective cannot serve its model.
    """
    card = _as_card(card)
    if objective is not None:
        card = card_from_dict(card_to_dict(card), {"objective": {"name": "custom"}})
    family = FAMILIES[card.model.family]
    if family.sequential and data is not None and not isinstance(data, Batch):
        raise DataError(
            f"data: model.family = {card.model.family!r} takes sequences, and an array would be "
            "split row by row with its time steps shuffled; pass pplvm.data.as_sequences([seq1, "
            "seq2, ...]) (each (T_i, D); one sequence: as_sequences(x))"
        )
    if data is None:
        dataset = load_dataset(card.data)
        if family.sequential and not isinstance(dataset.train, Batch):
            raise DataError(
                f"data.source = {card.data.source!r} gives a table of rows, but model.family = "
                f"{card.model.family!r} takes sequences, and its time steps would be split row by "
                "row and shuffled; use data.source = 'sequence_file' (an .npz with train and "
                "train_lengths; one sequence: train_lengths = [T])"
            )
    else:
        data = from_dict(data) if isinstance(data, dict) else data
        dataset = split(data if isinstance(data, Batch) else as_matrix(data, "data"), None, card.data)
        dataset.info["from_python"] = True
    if card.model.dim is not None and card.model.dim != dataset.dim:
        raise DataError(f"data has {dataset.dim} columns but model.dim = {card.model.dim}")
    dataset = _labelled(dataset, card)
    user_model, user_guide = model, guide
    pyro.set_rng_seed(card.training.seed)  # model parameters (decoders) start from the seed
    # on the run's device before the guide exists: autoguides create their parameters there
    model, guide = assemble(
        card,
        dataset.dim,
        resolve_device(card.training.device),
        dataset=dataset,
        model=model,
        guide=guide,
        objective=objective,
    )
    run = cls(card, model, guide, dataset.transform, dataset, checked=True, objective=objective)
    run.objects.update(model=user_model, guide=user_guide)
    return run


def load(
    cls: type[Run],
    run_dir: str | Path,
    *,
    device: str | None = None,
    model: Any = None,
    guide: Any = None,
    objective: Any = None,
    weights: str | None = None,
) -> Run:
    """Load a run directory written by :meth:`~pplvm.run.Run.fit` (best parameters if early-stopped).

    Args:
        run_dir: the run directory.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``; default the card's ``training.device``, or the
            CPU where this machine lacks that device (a GPU run loads on a CPU-only machine).
        model: the model object the run was fitted with from Python (``model=``), if any.
        guide: likewise its guide object.
        objective: likewise its objective object.
        weights: ``"ema"`` (the default for a run trained with ``training.ema``: the moving
            average of its weights) or ``"raw"`` (the parameters themselves).

    Returns:
        The fitted :class:`~pplvm.run.Run`, ready for queries; its data are read again on first use.

    Raises:
        RunDirError: ``run_dir`` holds no run, or its checkpoint does not match its card.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "card.toml").is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a pplvm run directory (no card.toml)")
    card = load_card(run_dir / "card.toml")
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    extras = ckpt["extras"]
    rundir.check_fingerprint(extras.get("card"), card, run_dir)
    with _matching(run_dir):  # a checkpoint from before fingerprints: its tensors tell
        where = resolve_device(card.training.device if device is None else device, cpu_fallback=True)
        model, guide = assemble(
            card,
            int(extras["dim"]),
            where,
            checkpoint=ckpt,
            model=model,
            guide=guide,
            objective=objective,
            weights=weights,
        )
    transform = Standardize(**extras["transform"])
    run = cls(card, model, guide, transform, None, run_dir, checked=True, objective=objective)
    run.history = read_history(run_dir, logged_epochs(ckpt), whole=False)  # (what can be read)
    run.weights = "raw" if weights == "raw" or "ema" not in ckpt else "ema"
    run.from_python = bool(extras.get("from_python"))
    return run


def reload_dataset(run: Run) -> Dataset:
    """A loaded run's data: its card's source, split as at fit time and checked for its model."""
    if run.from_python:
        raise RunDirError(
            "run.dataset: this run was fitted on data passed from Python, which its run directory does not "
            "keep; pass the data explicitly (e.g. run.log_likelihood(x))"
        )
    return card_dataset(run.card, run.model)


def assemble(
    card: BaseModel,
    dim: int,
    device: torch.device,
    *,
    dataset: Dataset | None = None,
    checkpoint: dict[str, Any] | None = None,
    model: Any = None,
    guide: Any = None,
    objective: Any = None,
    weights: str | None = None,
) -> tuple[LatentVariableModel, torch.nn.Module]:
    """``(model, guide)`` for ``card`` on ``device``: the family's model over ``dim``
    columns, the objective / guide pairing checked (once, before the guide exists), and the
    guide, its parameters created by a first call on prototype rows.

    From a card, give its ``dataset``: the splits are checked (and prepared) for the model and
    the guide starts from the training split (seeded by ``training.seed``). From a run
    directory, give its ``checkpoint``: the guide is built on the rows the checkpoint kept, and
    the model and guide take its (best) parameters, or their moving average (``weights``:
    :func:`~pplvm.training._ema.kept_weights`). ``model`` / ``guide``: the user's objects."""
    if dataset is None:
        prototype = _from_state(checkpoint["extras"]["prototype"])
    family = FAMILIES[card.model.family]
    if dataset is None:
        example = _without_index(prototype)
    else:  # what the model sees: an augmented split (e.g. binarized draws of grey images) as drawn
        generator = torch.Generator().manual_seed(card.training.seed)
        example = (
            dataset.train if dataset.augment is None else dataset.augment(dataset.train[:PROTOTYPE_ROWS], generator)
        )
    config = card.model.for_restarts(card.training.restarts)  # e.g. model.init = 'auto' decided
    model = family.from_config(config, dim, model=model, guide=guide, example=example).to(device)
    if dataset is not None:
        _check_splits(model, dataset, card.training.seed)
        train, num_data = dataset.train, len(dataset.train)
        generator = torch.Generator().manual_seed(card.training.seed)
    else:
        train, num_data, generator = example, checkpoint["extras"].get("num_train"), None
    card = settle(card, model, objective)  # "auto" options and guide decided for the model (Run settles the same)
    traits = guide_for(card.guide).traits(model)
    objective_for(card.objective, objective).check(model, traits)  # refuse an impossible pairing first
    with evaluating(model):  # building the guide runs the model (networks in .eval(): not a step)
        guide = make_guide(model, card.guide, train, generator=generator, num_data=num_data)
    if dataset is not None:
        prototype = _fit_input(traits, dataset.train)[:PROTOTYPE_ROWS]
    # autoguides create their parameters on the first call (the model runs on up to 256 rows); a
    # guide that declares ``lazy_parameters = False`` has none to create
    if getattr(guide, "lazy_parameters", True):
        with (
            torch.no_grad(),
            evaluating(model, guide),
            one_line(f"the guide's first call, on {len(prototype)} training rows, failed"),
        ):
            guide(to_device(prototype, model.device), num_data=num_data)
    if checkpoint is not None:
        model_state, guide_state = kept_weights(checkpoint, weights)
        model.load_state_dict(model_state)
        guide.load_state_dict(guide_state)
    return model, guide


def _check_splits(model: LatentVariableModel, dataset: Dataset, seed: int) -> None:
    """Check (and prepare, in place) the dataset's splits for ``model``."""
    path = dataset.info.get("path")
    check_image_shape(model.image_shape, dataset.info.get("image_shape"), f"data.path {path!r}" if path else "the data")
    if dataset.augment is None:
        dataset.train = model.validate(dataset.train, "data (training split)")
    else:  # the model sees augmented batches (e.g. binarized draws of grey images): check one
        seen = dataset.augment(dataset.train, torch.Generator().manual_seed(seed))
        model.validate(seen, "data (training split, augmented)")
    for part in ("valid", "test"):  # held-out data must also suit the model (e.g. symbols < C)
        if getattr(dataset, part) is not None:
            setattr(dataset, part, model.prepare(getattr(dataset, part), f"data ({part} split)"))


def card_dataset(card: BaseModel, model: LatentVariableModel | None = None) -> Dataset:
    """The card's data, split, as its family takes it (each split prepared for ``model`` when given)."""
    dataset = _labelled(load_dataset(card.data), card)
    if model is not None:
        _check_splits(model, dataset, card.training.seed)
    return dataset


def _labelled(dataset: Dataset, card: BaseModel) -> Dataset:
    """The dataset as the card's family takes it: splits as ``Batch(x, y)`` if it uses labels,
    or if it takes them where the source gives them (:attr:`~pplvm.families.LatentVariableModel.takes_labels`)."""
    family = FAMILIES[card.model.family]
    who = family.needs_labels(card.model)
    if who is None and not family.takes_labels:
        return dataset
    return dataset.with_labels(who, card.data.label_fraction, card.data.split_seed)


@contextlib.contextmanager
def _matching(run_dir: Path):
    """Name a checkpoint whose tensors do not fit the card's model and guide (checkpoints
    written before fingerprints, see :func:`~pplvm.rundir.check_fingerprint`)."""
    try:
        yield
    except PplvmError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunDirError(
            f"{str(run_dir)!r}: checkpoint.pt does not fit the model card.toml describes "
            f"({first}); restore the card the run was trained with, or fit a new run"
        ) from None


def _as_card(card: BaseModel | dict | str | Path, overrides=None) -> BaseModel:
    if isinstance(card, (str, Path)):
        return load_card(card, overrides)
    if isinstance(card, BaseModel):
        return card_from_dict(card_to_dict(card), overrides) if overrides else card
    return card_from_dict(card, overrides)


def seen_rows(dataset: Dataset, seed: int):
    """The first training rows as the model sees them: an augmented split (e.g. binarized draws
    of grey images) as drawn with ``seed``."""
    rows = dataset.train[:PROTOTYPE_ROWS]
    return rows if dataset.augment is None else dataset.augment(rows, torch.Generator().manual_seed(seed))


def _fit_input(traits, train):
    """The training data as the trainer feeds them: numbered rows (``Batch.index``) for a guide
    with parameters per training datum (:class:`~pplvm.guides.GuideTraits`), else as they are."""
    return indexed(train) if traits.per_datum else train


def _without_index(data):
    """Undo :func:`~pplvm.data.indexed`: the data as the family takes them."""
    if not isinstance(data, Batch) or data.index is None:
        return data
    rest = data.replace(index=None)
    return rest.x if rest.lengths is None and rest.y is None and not rest.inputs else rest


def _to_state(data: "torch.Tensor | Batch"):
    """A checkpoint-safe copy (tensors and dicts only) of a tensor or Batch."""
    if isinstance(data, Batch):
        return {k: v.clone() for k, v in data.tensors().items()}
    return data.clone()


def _from_state(state) -> "torch.Tensor | Batch":
    return Batch.from_tensors(state) if isinstance(state, dict) else state
