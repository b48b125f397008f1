"""A run: a card turned into (model, guide, objective), fitted, saved, loaded and queried.

This is the thin facade every family gets for free; the mathematics lives in the family
(``pplvm.families``), guides, objectives and the trainer. :class:`Run` holds a run's state;
its methods come from the facade's parts (:mod:`pplvm.facade`): building, training, queries
and artifacts.

Run directory::

    card.toml            the resolved card (every default written out)
    checkpoint.pt        model, guide, optimiser and trainer state (weights_only-safe), and the
                         card values its tensors depend on (checked against card.toml on load)
    metrics.jsonl        one JSON object per epoch
    inference_data.nc    arviz InferenceData (posterior, posterior_predictive, ...)
    loss.png, posterior.png, model.png (the model's graph), <family plots>.png
    summary.txt          arviz summary of the global latents and held-out metrics
    .pplvm.lock          held (fcntl) by the one process that fits or resumes the run
    .pplvm-new/          a new fit's files until its first epoch is done (then moved up)

A new fit refuses a directory that holds a run unless asked to overwrite it (see
:mod:`pplvm.rundir`); every file is written through a temporary file and a rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel

from . import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .data import Dataset, Standardize
from .facade import artifacts, build, query, train
from .facade.artifacts import LIKELIHOOD_WORDS, save_samples
from .facade.build import PROTOTYPE_ROWS, card_dataset
from .facade.build import _as_card as _as_card  # imported from here by workflows.sbc and tests
from .facade.build import _fit_input as _fit_input
from .facade.train import MAX_EPOCHS_ENV
from .families import LatentVariableModel
from .guides import guide_for
from .objectives import make_update_rule, objective_for, settle
from .training.trainer import Trainer


class Run:
    """A fitted (or about to be fitted) model. Build with :meth:`from_card` or :meth:`load`."""

    def __init__(
        self,
        card: BaseModel,
        model: LatentVariableModel,
        guide: torch.nn.Module,
        transform: Standardize,
        dataset: Dataset | None = None,
        run_dir: Path | None = None,
        *,
        checked: bool = False,
        objective: Any = None,
    ):
        """``checked``: the card's pairing of model, objective and guide has been checked
        (:func:`~pplvm.facade.build.assemble` checks it once, before the guide exists);
        ``objective``: your own objective object for ``objective.name = "custom"``."""
        self.model, self.guide, self.transform = model, guide, transform
        self.card = settle(card, model, objective)  # "auto" options and guide decided (written to card.toml)
        #: the guide's plugin and what its guide offers; the objective's plugin
        self.guide_plugin = guide_for(self.card.guide)
        self.traits = self.guide_plugin.traits(model)
        self.objective = objective_for(self.card.objective, objective)
        #: what training does with each minibatch (the objective's update rule)
        self.rule = make_update_rule(
            model,
            guide,
            self.card,
            held_out=self.traits.held_out,
            traits=self.traits,
            objective=self.objective,
            checked=checked,
        )
        self._dataset, self.run_dir = dataset, run_dir
        #: built from a run directory (:meth:`load`): its data are read again on first use
        self.loaded = dataset is None
        self.trainer: Trainer | None = None
        self.history: list[dict[str, Any]] = []
        self.from_python = bool(dataset is not None and dataset.info.get("from_python"))
        self.idata = None  # the InferenceData write_artifacts last built (the posterior alone without the export)
        #: the seed training starts from: training.seed, or the kept restart's (training.restarts)
        self.seed = self.card.training.seed
        #: the weights the model and guide hold once fitted or loaded: "ema" (training.ema's
        #: moving average) or "raw" (Run.load(weights="raw"), or a card without training.ema)
        self.weights = "ema" if self.card.training.ema is not None else "raw"
        #: what was passed from Python to build the run (None where the card built it)
        self.objects: dict[str, Any] = {"model": None, "guide": None, "objective": objective}

    @property
    def dataset(self) -> Dataset:
        """The run's data, split as at fit time, as its model takes them. A loaded run reads its
        card's data again on first use; a run fitted on data passed from Python cannot (its run
        directory does not keep them): a RunDirError says so."""
        if self._dataset is None:
            self._dataset = build.reload_dataset(self)
        return self._dataset

    @dataset.setter
    def dataset(self, value: Dataset | None) -> None:
        self._dataset = value

    @property
    def device(self) -> torch.device:
        """Where the model and guide live and every query computes (results come back on the host)."""
        return self.model.device

    # building: pplvm/facade/build.py
    from_card = classmethod(build.from_card)
    load = classmethod(build.load)

    # training: pplvm/facade/train.py
    fit = train.fit
    resume = classmethod(train.resume)
    _fit = train._fit
    _disk_bytes = train._disk_bytes
    _trainer = train._trainer
    _valid_metrics = train._valid_metrics

    # queries: pplvm/facade/query.py
    params = query.params
    draws = query.draws
    log_likelihood = query.log_likelihood
    posterior = query.posterior
    map_states = query.map_states
    sample = query.sample
    evaluate = query.evaluate
    to_arviz = query.to_arviz
    _export_shape = query.export_shape
    _prepare = query._prepare
    _params = query._params
    _draws = query._draws
    _replicates = query._replicates
    _training_data = query._training_data
    _model_log_likelihood = query._model_log_likelihood
    _chunked_log_likelihood = query._chunked_log_likelihood
    _rows_per_pass = query._rows_per_pass
    _by_rows = query._by_rows

    # artifacts: pplvm/facade/artifacts.py
    write_artifacts = artifacts.write_artifacts
    write_inference_data = artifacts.write_inference_data
    summary = artifacts.summary
    summary_text = artifacts.summary_text
    globals_label = artifacts.globals_label
    model_graph = artifacts.model_graph
    _host_model = artifacts._host_model
    _posterior_table = artifacts._posterior_table
    _summary_idata = artifacts._summary_idata


def fit(
    card: BaseModel | dict | str | Path,
    out: str | Path | None = None,
    *,
    data: Any = None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    overwrite: bool = False,
    model: Any = None,
    guide: Any = None,
    objective: Any = None,
) -> Run:
    """Build a run from ``card`` (TOML path, dict or validated card) and fit it; ``out``
    must be new or empty unless ``overwrite`` (see :meth:`Run.fit`); ``model`` / ``guide``: your
    own Pyro model (and guide) for ``model.family = "pyro"``; ``objective``: your own objective
    object (an Objective plugin, a Pyro ELBO class or instance, an UpdateRule class)."""
    run = Run.from_card(_as_card(card, overrides), data, model=model, guide=guide, objective=objective)
    return run.fit(out, overwrite=overwrite)


def load(run_dir: str | Path, *, model: Any = None, guide: Any = None, objective: Any = None) -> Run:
    """The run saved in ``run_dir``, as :meth:`Run.load`; ``model`` / ``guide`` / ``objective``:
    the objects of your own a run built from them was fitted with."""
    return Run.load(run_dir, model=model, guide=guide, objective=objective)


__all__ = ["LIKELIHOOD_WORDS", "MAX_EPOCHS_ENV", "PROTOTYPE_ROWS", "Run", "card_dataset", "fit", "load", "save_samples"]
