"""A run: a card turned into (model, guide, objective), fitted, saved, loaded and queried.

This is the thin facade every family gets for free; the mathematics lives in the family
(``pplvm.families``), guides, objectives and the trainer.

Run directory::

    card.toml            the resolved card (every default written out)
    checkpoint.pt        model, guide, optimiser and trainer state (weights_only-safe), and the
                         card values its tensors depend on (checked against card.toml on load)
    metrics.jsonl        one JSON object per epoch
    inference_data.nc    arviz InferenceData (posterior, posterior_predictive, ...)
    loss.png, posterior.png, model.png (the model's graph), <family plots>.png
    summary.txt          arviz summary of the global latents and held-out metrics
    .pplvm.lock          held (fcntl) by the one process that fits or resumes the run

A new fit refuses a directory that holds a run unless asked to overwrite it (see
:mod:`pplvm.rundir`); every file is written through a temporary file and a rename.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyro
import torch
from pydantic import BaseModel
from pyro.infer import Predictive

from . import rundir
from ._progress import progress, reporting
from .config import card_from_dict, card_to_dict, check_count, check_seed, dump_card, load_card
from .data import Batch, Dataset, Standardize, as_matrix, indexed, load_dataset, values
from .data.base import split
from .errors import ArgumentError, CardError, DataError, IncompatibleError, PplvmError, RunDirError
from .evaluation import graph, memory, plots
from .evaluation.arviz import arviz, inference_data, small_sites
from .families import FAMILIES, LatentVariableModel
from .guides import guide_for, make_guide
from .objectives import make_update_rule, objective_for, settle
from .training import distributed
from .training.checkpoint import atomic_write_bytes, load_checkpoint
from .training.trainer import Callback, Trainer, _host, read_history, resolve_device, to_device

PROTOTYPE_ROWS = 256
#: environment variable capping the epochs each fit or resume runs (tests and smoke runs of
#: the shipped cards and README commands): ``PPLVM_MAX_EPOCHS=2 pplvm fit ...``
MAX_EPOCHS_ENV = "PPLVM_MAX_EPOCHS"
#: how each likelihood kind is named wherever a log-likelihood is shown
LIKELIHOOD_WORDS = {"exact": "exact", "estimate": "importance-sampled estimate", "bound": "lower bound", "none": "none"}


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
    ):
        self.model, self.guide, self.transform = model, guide, transform
        #: the guide's plugin and what its guide offers; the objective's plugin, its "auto" options decided
        self.card = settle(card, model)  # "auto" options and guide decided for the model (written to card.toml)
        self.guide_plugin = guide_for(self.card.guide)
        self.traits = self.guide_plugin.traits(model)
        self.objective = objective_for(self.card.objective)
        #: what training does with each minibatch (the objective's update rule)
        self.rule = make_update_rule(
            model, guide, self.card, held_out=self.traits.held_out, traits=self.traits, objective=self.objective
        )
        self.dataset, self.run_dir = dataset, run_dir
        self.trainer: Trainer | None = None
        self.history: list[dict[str, Any]] = []
        self.from_python = bool(dataset is not None and dataset.info.get("from_python"))
        self.idata = None  # the InferenceData last written by write_artifacts

    # ----------------------------------------------------------------- building
    @classmethod
    def from_card(
        cls, card: BaseModel | dict | str | Path, data: Any = None, *, model: Any = None, guide: Any = None
    ) -> "Run":
        """Build from a card (validated object, dict or TOML path). ``data``: an optional
        ``(N, D)`` array (or a :class:`~pplvm.data.Batch` of sequences) used instead of the
        card's source, split as the card says. ``model`` / ``guide``: your own Pyro model and
        guide objects for ``model.family = "pyro"`` (instead of ``model.target``)."""
        card = _as_card(card)
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
            dataset = split(data if isinstance(data, Batch) else as_matrix(data, "data"), None, card.data)
            dataset.info["from_python"] = True
        if card.model.dim is not None and card.model.dim != dataset.dim:
            raise DataError(f"data has {dataset.dim} columns but model.dim = {card.model.dim}")
        dataset = _labelled(dataset, card)
        pyro.set_rng_seed(card.training.seed)  # model parameters (decoders) start from the seed
        # on the run's device before the guide exists: autoguides create their parameters there
        model = family.from_config(card.model, dataset.dim, model=model, guide=guide).to(
            resolve_device(card.training.device)
        )
        if dataset.augment is None:
            dataset.train = model.validate(dataset.train, "data (training split)")
        else:  # the model sees augmented batches (e.g. binarized draws of grey images): check one
            seen = dataset.augment(dataset.train, torch.Generator().manual_seed(card.training.seed))
            model.validate(seen, "data (training split, augmented)")
        for part in ("valid", "test"):  # held-out data must also suit the model (e.g. symbols < C)
            if getattr(dataset, part) is not None:
                setattr(dataset, part, model.prepare(getattr(dataset, part), f"data ({part} split)"))
        card = settle(card, model)
        traits = guide_for(card.guide).traits(model)
        objective_for(card.objective).check(model, traits)  # refuse an impossible pairing first
        guide = make_guide(
            model, card.guide, dataset.train, generator=torch.Generator().manual_seed(card.training.seed)
        )
        with torch.no_grad():  # autoguides create their parameters on the first call
            guide(
                to_device(_fit_input(traits, dataset.train)[:PROTOTYPE_ROWS], model.device), num_data=len(dataset.train)
            )
        return cls(card, model, guide, dataset.transform, dataset)

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str | None = None, model: Any = None, guide: Any = None) -> "Run":
        """Load a run directory written by :meth:`fit` (best parameters if early-stopped).
        ``device`` (``auto`` | ``cpu`` | ``cuda[:N]``) defaults to the card's
        ``training.device``, or the CPU where this machine lacks that device: a run trained on
        a GPU loads on a CPU-only machine, and one trained on a CPU loads on a GPU (``auto``).
        ``model`` / ``guide``: the objects a run of your own model was fitted with from Python."""
        run_dir = Path(run_dir)
        if not (run_dir / "card.toml").is_file():
            raise RunDirError(f"{str(run_dir)!r} is not a pplvm run directory (no card.toml)")
        card = load_card(run_dir / "card.toml")
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        extras = ckpt["extras"]
        rundir.check_fingerprint(extras.get("card"), card, run_dir)
        with _matching(run_dir):  # a checkpoint from before fingerprints: its tensors tell
            where = _load_device(card.training.device if device is None else device)
            model = (
                FAMILIES[card.model.family]
                .from_config(card.model, int(extras["dim"]), model=model, guide=guide)
                .to(where)
            )
            proto = _from_state(extras["prototype"])
            guide = make_guide(model, card.guide, _without_index(proto), num_data=extras.get("num_train"))
            with torch.no_grad():
                guide(to_device(proto, where))
            params = ckpt["best"] or ckpt
            model.load_state_dict(params["model"])
            guide.load_state_dict(params["guide"])
        run = cls(card, model, guide, Standardize(**extras["transform"]), None, run_dir)
        run.history = read_history(run_dir, int(ckpt["trainer"]["epoch"]))
        run.from_python = bool(extras.get("from_python"))
        return run

    # ----------------------------------------------------------------- training
    def fit(
        self, out: str | Path | None = None, *, overwrite: bool = False, callbacks: Sequence[Callback] = ()
    ) -> "Run":
        """Train as the card's ``[training]`` says; with ``out``, write a run directory.

        ``out`` must be new or empty: a directory holding a run is refused unless
        ``overwrite``, which deletes the old run's files first. The directory is locked
        while the fit writes it (a second fit into it is refused).

        Started by torchrun (several processes), every process trains on its shard of each
        batch and rank 0 alone prepares, locks and writes the run directory (see
        :mod:`pplvm.training.distributed`)."""
        if self.dataset is None:
            raise RunDirError("this run has no data loaded; use Run.resume() to continue training")
        self.card = _epoch_cap(self.card, 0)
        main = distributed.init_from_env(self.card.training.device).is_main
        if out is None:
            return self._fit(callbacks)
        with contextlib.ExitStack() as stack:
            with distributed.agreed("prepare the run directory"):
                if main:
                    run_dir = stack.enter_context(
                        rundir.new_run(out, overwrite=overwrite, need_bytes=self._checkpoint_bytes())
                    )
                    with rundir.storage(f"run directory {str(run_dir)!r}"):
                        dump_card(self.card, run_dir / "card.toml")
                        (run_dir / "metrics.jsonl").write_text("")
                self.run_dir = Path(out)
            return self._fit(callbacks)

    def _fit(self, callbacks: Sequence[Callback]) -> "Run":
        self.trainer = self._trainer(callbacks)
        with rundir.storage(f"run directory {str(self.run_dir)!r}"):
            self.trainer.fit(_fit_input(self.traits, self.dataset.train), self.dataset.valid)
        self.history = self.trainer.state.history
        if self.run_dir is not None and distributed.is_main():
            self.write_artifacts()
        return self

    def _checkpoint_bytes(self) -> int:
        """About the size of a checkpoint: the parameters, twice the optimiser's moments, the
        best parameters, and the prototype data."""
        params = sum(t.numel() * t.element_size() for m in (self.model, self.guide) for t in m.state_dict().values())
        return 6 * params + 2**20

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        epochs: int | None = None,
        data: Any = None,
        callbacks: Sequence[Callback] = (),
        model: Any = None,
        guide: Any = None,
    ) -> "Run":
        """Continue an interrupted run from its last checkpoint; the result equals an
        uninterrupted run with the same seed. ``epochs`` sets a new total epoch budget (at
        least the epochs done). Everything is checked before anything is written: ``card.toml``
        is rewritten only once the checkpoint has loaded into the card's model."""
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
                if epochs is not None:
                    done = int(ckpt["trainer"]["epoch"])
                    if check_count(epochs, "epochs") < done:
                        raise ArgumentError(
                            f"epochs: {epochs} is fewer than the {done} epochs this run has done; "
                            f"expected a new total budget of at least {done}"
                        )
                    card = card_from_dict(card_to_dict(card), {"training.epochs": epochs})
                if data is None and ckpt["extras"].get("from_python"):
                    raise RunDirError("this run was fitted on data passed from Python; pass the same data= to resume")
                card = _epoch_cap(card, int(ckpt["trainer"]["epoch"]))
                run = cls.from_card(card, data, model=model, guide=guide)
                run.run_dir = run_dir
                if main:
                    rundir.check_writable(run_dir, run._checkpoint_bytes())
            run.trainer = run._trainer(callbacks)
            train = _fit_input(run.traits, run.dataset.train)
            with _matching(run_dir), rundir.storage(f"run directory {str(run_dir)!r}"):
                run.trainer.resume(train)
            with rundir.storage(f"run directory {str(run_dir)!r}"):
                if main:
                    dump_card(card, run_dir / "card.toml")  # written last: the resume can go on
                run.trainer.fit(train, run.dataset.valid)
            run.history = run.trainer.state.history
            if main:
                run.write_artifacts()
        return run

    def _trainer(self, callbacks: Sequence[Callback]) -> Trainer:
        d = self.dataset
        extras = {
            "dim": self.model.dim,
            "transform": self.transform.state_dict(),
            "prototype": _to_state(_fit_input(self.traits, d.train)[:PROTOTYPE_ROWS]),
            "num_train": len(d.train),
            "from_python": bool(d.info.get("from_python")),
            "card": rundir.card_fingerprint(self.card),
        }  # what load and resume check card.toml against
        # early stopping follows the exact held-out log-likelihood where the family has one,
        # else the held-out loss (a noisier Monte-Carlo estimate)
        monitor = "valid_log_likelihood" if self.model.likelihood == "exact" else "valid_loss"
        # a family without a likelihood ("none") is judged by its rule's held-out loss alone
        valid_metrics = self._valid_metrics if self.model.likelihood != "none" else None
        ctx = distributed.init_from_env(self.card.training.device)
        return Trainer(
            self.model,
            self.guide,
            self.rule,
            self.card.training,
            run_dir=self.run_dir,
            valid_metrics=valid_metrics,
            extras=extras,
            callbacks=callbacks,
            monitor=monitor,
            augment=d.augment,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )

    @property
    def device(self) -> torch.device:
        """Where the model and guide live and every query computes (results come back on the host)."""
        return self.model.device

    def _valid_metrics(self, valid: torch.Tensor) -> dict[str, float]:
        ll = self._chunked_log_likelihood(valid, self._params()) + self.transform.log_abs_det_jacobian(valid)
        return {"valid_log_likelihood": float(ll.mean())}

    def _model_log_likelihood(self, xt, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The family's ``log p(x | θ)``. A family whose marginal is an importance-sampling
        estimate over continuous local latents gets the amortized guide's ``q(z | x)`` as its
        proposal (see :class:`~pplvm.families.base.ContinuousLatentModel`)."""
        kind = self.model.likelihood
        if kind == "none":
            raise IncompatibleError(
                f"model.family = {self.card.model.family!r} has an implicit density: "
                "it has no log-likelihood (compare samples instead)"
            )
        if kind == "estimate" and self.traits.proposal:
            return self.model.log_likelihood(xt, params, proposal=self.guide)
        return self.model.log_likelihood(xt, params)

    def _chunked_log_likelihood(
        self, xt, params: dict[str, torch.Tensor], num_draws: int | None = None
    ) -> torch.Tensor:
        """:meth:`_model_log_likelihood` in passes over chunks of rows and, with ``num_draws``
        (the leading dim of every ``params`` entry), of draws, each pass within
        ``evaluation.memory_mb`` (:mod:`pplvm.evaluation.memory`): ``(S, N)``, else ``(N,)``,
        computed on the run's device and returned on the host."""
        params = {k: v.to(self.device) for k, v in params.items()}
        n, per_draw = len(xt), bool(params) and num_draws is not None
        draws, rows = memory.plan(
            num_draws if per_draw else 1, n, self.model.evaluation_cost(xt), self.card.evaluation.memory_mb
        )
        blocks = []
        draw_spans, row_spans = list(memory.spans(num_draws if per_draw else 1, draws)), list(memory.spans(n, rows))
        with progress(len(draw_spans) * len(row_spans), "log-likelihood", unit="pass") as bar:
            for ds in draw_spans:
                p = {k: v[ds] for k, v in params.items()} if per_draw else params
                parts = []
                for rs in row_spans:
                    parts.append(self._model_log_likelihood(to_device(xt[rs], self.device), p).cpu())
                    bar.update(1)
                blocks.append(torch.cat(parts, -1))
        return torch.cat(blocks, 0) if per_draw else blocks[0]

    def _rows_per_pass(self, xt) -> int:
        """Data per pass of a point-estimate query (local posteriors, MAP states) within
        ``evaluation.memory_mb``."""
        return memory.plan(1, len(xt), self.model.evaluation_cost(xt), self.card.evaluation.memory_mb)[1]

    def _by_rows(self, fn, xt) -> dict[str, torch.Tensor]:
        """``fn(chunk) -> {name: (n, ...)}`` over chunks of rows of ``xt`` (each moved to the
        run's device), concatenated on the host."""
        parts = [_host(fn(to_device(xt[rs], self.device))) for rs in memory.spans(len(xt), self._rows_per_pass(xt))]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    # ------------------------------------------------------------------ queries
    def _prepare(self, x: Any, name: str = "x"):
        return self.transform(self.model.prepare(x, name))

    @torch.no_grad()
    def params(self) -> dict[str, torch.Tensor]:
        """Point estimate of the global latents: the guide's median (on the host)."""
        return _host(self._params())

    def _params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.guide.median().items()}

    @torch.no_grad()
    def draws(self, num: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num`` posterior draws of the globals from the guide, each ``(num, *site_shape)``
        (empty when the family has no global latents: all its parameters are point estimates),
        on the host."""
        num, seed = check_count(num, "num"), check_seed(seed, "seed")
        return _host(self._draws(num, seed))

    def _draws(self, num: int, seed: int = 0) -> dict[str, torch.Tensor]:
        if not self.model.global_sites:
            return {}
        # a local guide's globals are drawn from its globals' guide, which needs no data
        guide = self.guide_plugin.globals_guide(self.guide)
        with pyro.poutine.seed(rng_seed=seed):
            out = Predictive(guide, num_samples=num, parallel=True, return_sites=list(self.model.global_sites))()
        point = self._params()
        return {k: out[k].detach().reshape(num, *point[k].shape) for k in self.model.global_sites}

    @torch.no_grad()
    def log_likelihood(self, x: Any, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``log p(x_n | θ)`` per row of ``x`` (in the data's own units), ``(N,)``; exact for
        families whose ``likelihood`` is ``"exact"`` (else an estimate or a bound, as the family
        declares). ``params`` defaults to :meth:`params`."""
        xt = self._prepare(x)
        p = self.params() if params is None else params
        return self._chunked_log_likelihood(xt, p) + self.transform.log_abs_det_jacobian(xt)

    @torch.no_grad()
    def posterior(self, x: Any = None) -> dict[str, torch.Tensor]:
        """Posterior of the local latents given ``x`` (default: the training data).
        Enumerated families: exact marginals per local site (e.g. responsibilities ``(N, K)``).
        Continuous-latent families: the guide's ``q(z_n | x_n)`` as ``{"loc": (N, L), "scale":
        (N, L)}`` (the exact posterior for the ``exact`` guide; the ``meanfield`` guide has it
        for the training data only)."""
        if x is None and self.traits.per_datum:
            q = self.guide.training_posterior()  # needs no data: one q(z_n) per training row
            return _host({"loc": q.mean, "scale": q.stddev})
        xt = self._prepare(x) if x is not None else self._training_data()
        if self.model.enumerated:
            params = self._params()
            return self._by_rows(lambda part: self.model.local_marginals(part, params), xt)
        if not self.traits.proposal:
            raise IncompatibleError(f"guide.kind = {self.card.guide.kind!r} has no q(z | x) for the local latents")
        q = self.guide.local_posterior(to_device(xt, self.device))
        return _host({"loc": q.mean, "scale": q.stddev})

    def map_states(self, x: Any) -> dict[str, torch.Tensor]:
        """Most probable local latents given ``x`` (e.g. MAP assignments ``(N,)``)."""
        params = self._params()
        return self._by_rows(lambda part: self.model.map_locals(part, params), self._prepare(x))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` new data ``(n, D)`` (sequences: ``(n, T, D)``) from the fitted model, in the
        data's own units."""
        n, seed = check_count(n, "n"), check_seed(seed, "seed")
        with pyro.poutine.seed(rng_seed=seed):
            return self.transform.inverse(self.model.sample(n, self._params()).cpu())

    @torch.no_grad()
    def evaluate(self, x: Any) -> dict[str, Any]:
        """Log-likelihood of ``x`` per datum and in total; where the family decomposes it
        (:meth:`~pplvm.families.base.LatentVariableModel.likelihood_terms`), also each term's
        mean (nats per datum, ``terms``) and the total in bits per dimension."""
        xt = self._prepare(x)
        terms = _host(self.model.likelihood_terms(to_device(xt, self.device), self._params()))
        if terms is None:
            ll = self.log_likelihood(x)
        else:
            ll = -torch.stack(list(terms.values()), -1).sum(-1) + self.transform.log_abs_det_jacobian(xt)
        out = {
            "n": int(ll.numel()),
            "log_likelihood_mean": float(ll.mean()),
            "log_likelihood_sum": float(ll.sum()),
            "likelihood": self.model.likelihood,
            "exact": self.model.likelihood == "exact",
        }
        if terms is not None:
            out["terms"] = {k: float(v.mean()) for k, v in terms.items()}
            out["bits_per_dim"] = -float(ll.mean()) / (self.model.dim * math.log(2))
        return out

    @torch.no_grad()
    def to_arviz(self, x: Any = None, *, seed: int = 0, posterior_predictive: bool = True):
        """arviz ``InferenceData`` of the fit on ``x`` (default: the training data)."""
        ev = self.card.evaluation
        xt = self._prepare(x) if x is not None else self._training_data()
        if len(xt) > ev.max_rows:
            xt = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))[: ev.max_rows]]
        s = ev.draws * ev.chains
        draws = self._draws(s, seed)  # on the run's device; exported from the host
        ll = None  # an implicit density ("none") has no log_likelihood group
        if self.model.likelihood != "none":
            ll = self._chunked_log_likelihood(xt, draws, s) + self.transform.log_abs_det_jacobian(xt)
            ll = ll.expand(s, *ll.shape[-1:])  # a family without global latents: the same for every draw
        ppc = self._replicates(xt, draws, seed + 1) if posterior_predictive else None  # None: over the bound
        observed = _mask_padding(values(self.transform.inverse(xt)), xt)
        return inference_data(_host(draws), ll, observed, ppc, chains=ev.chains, dims=self.model.site_dims)

    def _replicates(self, xt, draws: dict[str, torch.Tensor], seed: int) -> torch.Tensor | None:
        """Posterior-predictive replicates of ``xt`` in the data's units, padding NaN:
        ``(chains · d, *values(xt).shape)`` for the first ``d`` draws of each chain, ``d`` as
        many as fit a quarter of ``evaluation.memory_mb`` (all when they fit; None — no
        posterior_predictive group — when not even one per chain does), each drawn in passes
        over chunks of rows (:mod:`pplvm.evaluation.memory`)."""
        ev = self.card.evaluation
        shape = values(xt).shape
        per_chain = min(ev.draws, memory.budget_elements(ev.memory_mb) // max(1, ev.chains * shape.numel()))
        if per_chain < 1:
            return None
        out = torch.empty((ev.chains * per_chain, *shape), dtype=values(xt).dtype)
        rows = self._rows_per_pass(xt)
        with pyro.poutine.seed(rng_seed=seed), progress(len(out), "posterior predictive", unit="draw") as bar:
            for j, i in enumerate(c * ev.draws + d for c in range(ev.chains) for d in range(per_chain)):
                p = {k: v[i] for k, v in draws.items()}
                for rs in memory.spans(len(xt), rows):
                    rep = self.model.replicate(to_device(xt[rs], self.device), p).cpu()
                    out[j, rs] = _mask_padding(self.transform.inverse(rep), xt[rs])
                bar.update(1)
        return out

    def _training_data(self) -> "torch.Tensor | Batch":
        """The training split as the model sees it (one fixed draw of an augmented split)."""
        if self.dataset is None:
            if self.from_python:
                raise RunDirError(
                    "this run was fitted on data passed from Python, which its run directory "
                    "does not keep: pass the data explicitly"
                )
            self.dataset = card_dataset(self.card)
        d, seed = self.dataset, self.card.training.seed
        return d.train if d.augment is None else d.augment(d.train, torch.Generator().manual_seed(seed))

    # ---------------------------------------------------------------- artifacts
    def write_artifacts(self) -> None:
        """Write inference data, plots and the text summary into the run directory."""
        d = self.run_dir
        with reporting(self.card.training.progress):
            idata = self.idata = self.to_arviz()
        # the netCDF library can crash (not raise) on a full disk: check the space first
        rundir.check_writable(d, 2 * _nbytes(idata))
        with rundir.storage(f"run directory {str(d)!r}"):
            rundir.write_atomic(
                d / "inference_data.nc", lambda tmp: idata.to_netcdf(str(tmp)), f"{str(d / 'inference_data.nc')!r}"
            )
            plots.save_figure(plots.loss_plot(self.history), d / "loss.png")
            plots.save_figure(self.model_graph(), d / "model.png")
            if self.model.global_sites:
                plots.save_figure(plots.posterior_plot(idata, self.model.global_sites), d / "posterior.png")
            for name, fig in self._host_model().plots(self._training_data(), self.params()).items():
                plots.save_figure(fig, d / f"{name}.png")
            atomic_write_bytes(d / "summary.txt", self.summary_text(idata).encode())

    def _host_model(self) -> LatentVariableModel:
        """The model with its parameters on the host (plots draw from host tensors)."""
        return self.model if self.device.type == "cpu" else copy.deepcopy(self.model).to("cpu")

    def _posterior_table(self, idata, max_size: int | None):
        """``(table, hidden)``: the arviz summary (a DataFrame, None when no site is small
        enough) of the global sites with at most ``max_size`` entries, and the others' names."""
        shown = small_sites(idata, self.model.global_sites, max_size)
        hidden = [v for v in self.model.global_sites if v not in shown]
        if not shown:  # every site may be larger than max_size (e.g. a Bayesian W): nothing to tabulate
            return None, hidden
        with warnings.catch_warnings():  # r_hat of constant entries (a MAP guide, LKJ zeros) is 0/0
            warnings.simplefilter("ignore", RuntimeWarning)
            table = arviz().summary(idata, var_names=shown, kind="all", round_to=4)
        table = table[table["sd"] > 0] if not self.traits.point_estimate else table[["mean"]]
        return table, hidden

    def _summary_idata(self, idata):
        if idata is None:  # after fit(out=...), reuse what write_artifacts built
            idata = self.idata if self.idata is not None else self.to_arviz(posterior_predictive=False)
        return idata

    def summary(self, idata=None, max_size: int | None = None) -> dict[str, Any]:
        """The summary as plain data (what ``pplvm summary --json`` prints): the run, its last
        epoch, the best held-out log-likelihood and, per global-latent entry, arviz's summary
        statistics (``posterior``: ``{"locs[0, 1]": {"mean": ..., "sd": ..., ...}}``; NaN as null)."""
        c, last = self.card, (self.history[-1] if self.history else {})
        out: dict[str, Any] = {
            "run": c.name,
            "family": c.model.family,
            "guide": c.guide.kind,
            "objective": c.objective.name,
            "likelihood": self.model.likelihood,
            "epochs": last.get("epoch", 0),
            "train_loss": last.get("train_loss"),
            "valid_log_likelihood": None,
            "valid_epoch": None,
            "posterior": {},
            "not_shown": [],
        }
        scored = [h for h in self.history if "valid_log_likelihood" in h]
        if scored:
            best = max(scored, key=lambda h: h["valid_log_likelihood"])
            out.update(valid_log_likelihood=best["valid_log_likelihood"], valid_epoch=best["epoch"])
        if self.model.global_sites:
            table, out["not_shown"] = self._posterior_table(self._summary_idata(idata), max_size)
            if table is not None:
                out["posterior"] = {
                    str(name): {str(k): (None if v != v else float(v)) for k, v in row.items()}
                    for name, row in table.iterrows()
                }
        return out

    def globals_label(self) -> str:
        """What the fitted globals are: guide draws, or a point estimate (and by what)."""
        return self.objective.globals_label()

    def model_graph(self):
        """The model drawn as a graph — sites, plates, observed vs latent, dependencies — from
        Pyro's model inspection on a few training rows: a matplotlib Figure."""
        x = self._training_data()[:PROTOTYPE_ROWS]
        relations = graph.model_relations(self.model, x)
        return graph.model_graph(relations, title=f"{self.card.name}: model.family = {self.card.model.family!r}")

    def summary_text(self, idata=None, max_size: int | None = None) -> str:
        """Header, held-out metrics and the arviz summary of the global latents; with
        ``max_size``, sites with more entries than that are named but not tabulated."""
        c = self.card
        if self.model.global_sites:
            table, hidden = self._posterior_table(self._summary_idata(idata), max_size)
            posterior = [f"{self.globals_label()}:"]
            if table is not None:
                posterior.append(table.to_string())
            if hidden:
                posterior.append(f"(not shown: {', '.join(hidden)}; summary.txt in the run directory has them)")
        else:
            posterior = ["no global latents: every parameter (weights, W, noise) is a point estimate"]
        last = self.history[-1] if self.history else {}
        lines = [
            f"run: {c.name} — family {c.model.family}, guide {c.guide.kind}, objective {c.objective.name}",
            f"epochs: {last.get('epoch', 0)}, final train loss per datum: {last.get('train_loss', float('nan')):.6g}",
        ]
        if "valid_log_likelihood" in last:
            best = max(
                (h for h in self.history if "valid_log_likelihood" in h), key=lambda h: h["valid_log_likelihood"]
            )
            lines.append(
                f"held-out log-likelihood per datum: {best['valid_log_likelihood']:.6g} "
                f"(epoch {best['epoch']}, {LIKELIHOOD_WORDS[self.model.likelihood]})"
            )
        lines += ["", *posterior]
        return "\n".join(lines) + "\n"


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


def card_dataset(card: BaseModel) -> Dataset:
    """The card's data, split, as its family takes it."""
    return _labelled(load_dataset(card.data), card)


def _labelled(dataset: Dataset, card: BaseModel) -> Dataset:
    """The dataset as the card's family takes it: splits as ``Batch(x, y)`` if it uses labels."""
    who = FAMILIES[card.model.family].needs_labels(card.model)
    return dataset if who is None else dataset.with_labels(who)


def _nbytes(idata) -> int:
    """Bytes of the arrays in an InferenceData (arviz 0.x) or DataTree (arviz 1.x)."""
    try:
        if hasattr(idata, "subtree"):  # DataTree
            return int(sum(node.dataset.nbytes for node in idata.subtree))
        return int(sum(idata[g].nbytes for g in idata.groups()))
    except (AttributeError, KeyError, TypeError):
        return 0


def _mask_padding(x: torch.Tensor, like: torch.Tensor | Batch) -> torch.Tensor:
    """Values ``(*S, N, T, ...)`` for export with the padded steps of the sequences in ``like``
    set to NaN (arviz: missing); unchanged for data that are not padded sequences."""
    if isinstance(like, Batch) and like.lengths is not None:
        mask = torch.arange(like.x.shape[1]) < like.lengths[:, None]  # (N, T)
        trailing = like.x.dim() - 2  # dims after (N, T)
        x = x.masked_fill(~mask.reshape(mask.shape + (1,) * trailing), float("nan"))
    return x


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


def fit(
    card: BaseModel | dict | str | Path,
    out: str | Path | None = None,
    *,
    data: Any = None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    overwrite: bool = False,
    model: Any = None,
    guide: Any = None,
) -> Run:
    """Build a run from ``card`` (TOML path, dict or validated card) and fit it; ``out``
    must be new or empty unless ``overwrite`` (see :meth:`Run.fit`); ``model`` / ``guide``: your
    own Pyro model (and guide) for ``model.family = "pyro"``."""
    return Run.from_card(_as_card(card, overrides), data, model=model, guide=guide).fit(out, overwrite=overwrite)


def load(run_dir: str | Path, *, model: Any = None, guide: Any = None) -> Run:
    return Run.load(run_dir, model=model, guide=guide)


def _load_device(spec: str) -> torch.device:
    """The device ``spec`` names, or the CPU where this machine has no such device."""
    if spec != "auto" and spec != "cpu" and not torch.cuda.is_available():
        return torch.device("cpu")
    return resolve_device(spec)


def _fit_input(traits, train):
    """The training data as the trainer feeds them: numbered rows (``Batch.index``) for a guide
    with parameters per training datum (:class:`~pplvm.guides.GuideTraits`), else as they are."""
    return indexed(train) if traits.per_datum else train


def _without_index(data):
    """Undo :func:`~pplvm.data.indexed`: the data as the family takes them."""
    if not isinstance(data, Batch) or data.index is None:
        return data
    rest = data.replace(index=None)
    return rest.x if rest.lengths is None and rest.y is None else rest


def _to_state(data: "torch.Tensor | Batch"):
    """A checkpoint-safe copy (tensors and dicts only) of a tensor or Batch."""
    if isinstance(data, Batch):
        return {k: v.clone() for k, v in data.fields().items() if v is not None}
    return data.clone()


def _from_state(state) -> "torch.Tensor | Batch":
    return Batch(**state) if isinstance(state, dict) else state


def save_samples(x: torch.Tensor, path: str | Path) -> None:
    """Write samples as ``.npy`` or ``.csv`` (by suffix), atomically."""
    path = Path(path)
    arr = values(x).detach().cpu().numpy()
    buf = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buf, arr)
    elif path.suffix == ".csv":
        if arr.ndim != 2:
            raise PplvmError(f"--out {str(path)!r}: samples of shape {arr.shape} do not fit a CSV table; use .npy")
        np.savetxt(buf, arr, delimiter=",")
    else:
        raise PplvmError(f"--out {str(path)!r}: expected a .npy or .csv file name")
    with rundir.storage(f"--out {str(path)!r}"):
        atomic_write_bytes(path, buf.getvalue())
