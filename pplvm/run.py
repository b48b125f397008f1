"""A run: a card turned into (model, guide, objective), fitted, saved, loaded and queried.

This is the thin facade every family gets for free; the mathematics lives in the family
(``pplvm.families``), guides, objectives and the trainer.

Run directory::

    card.toml            the resolved card (every default written out)
    checkpoint.pt        model, guide, optimiser and trainer state (weights_only-safe)
    metrics.jsonl        one JSON object per epoch
    inference_data.nc    arviz InferenceData (posterior, posterior_predictive, ...)
    loss.png, posterior.png, model.png (the model's graph), <family plots>.png
    summary.txt          arviz summary of the global latents and held-out metrics
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyro
import torch
from pydantic import BaseModel
from pyro.infer import Predictive

from .config import card_from_dict, card_to_dict, dump_card, load_card
from .data import Batch, Dataset, indexed, Standardize, as_matrix, load_dataset, values
from .data.base import split
from .errors import DataError, IncompatibleError, PplvmError, RunDirError
from .evaluation import graph, plots
from .evaluation.arviz import arviz, inference_data, small_sites
from .families import FAMILIES, LatentVariableModel
from .guides import make_guide
from .guides.local import LocalGuide, MeanFieldLocal
from .objectives import check_compatible, make_objective, make_schedule
from .training.checkpoint import atomic_write_bytes, load_checkpoint
from .training.trainer import Callback, Trainer

PROTOTYPE_ROWS = 256
#: how each likelihood kind is named wherever a log-likelihood is shown
LIKELIHOOD_WORDS = {"exact": "exact", "estimate": "importance-sampled estimate", "bound": "lower bound", "none": "none"}


class Run:
    """A fitted (or about to be fitted) model. Build with :meth:`from_card` or :meth:`load`."""

    def __init__(self, card: BaseModel, model: LatentVariableModel, guide: torch.nn.Module,
                 transform: Standardize, dataset: Dataset | None = None, run_dir: Path | None = None):
        self.card, self.model, self.guide, self.transform = card, model, guide, transform
        self.objective = make_objective(model, card.objective)
        self.dataset, self.run_dir = dataset, run_dir
        self.trainer: Trainer | None = None
        self.history: list[dict[str, Any]] = []
        self.from_python = bool(dataset is not None and dataset.info.get("from_python"))
        self.idata = None  # the InferenceData last written by write_artifacts

    # ----------------------------------------------------------------- building
    @classmethod
    def from_card(cls, card: BaseModel | dict | str | Path, data: Any = None, *, model: Any = None,
                  guide: Any = None) -> "Run":
        """Build from a card (validated object, dict or TOML path). ``data``: an optional
        ``(N, D)`` array (or a :class:`~pplvm.data.Batch` of sequences) used instead of the
        card's source, split as the card says. ``model`` / ``guide``: your own Pyro model and
        guide objects for ``model.family = "pyro"`` (instead of ``model.target``)."""
        card = _as_card(card)
        family = FAMILIES[card.model.family]
        if data is None:
            dataset = load_dataset(card.data)
        else:
            dataset = split(data if isinstance(data, Batch) else as_matrix(data, "data"), None, card.data)
            dataset.info["from_python"] = True
        if card.model.dim is not None and card.model.dim != dataset.dim:
            raise DataError(f"data has {dataset.dim} columns but model.dim = {card.model.dim}")
        dataset = _labelled(dataset, card)
        pyro.set_rng_seed(card.training.seed)  # model parameters (decoders) start from the seed
        model = family.from_config(card.model, dataset.dim, model=model, guide=guide)
        if dataset.augment is None:
            dataset.train = model.validate(dataset.train, "data (training split)")
        else:  # the model sees augmented batches (e.g. binarized draws of grey images): check one
            seen = dataset.augment(dataset.train, torch.Generator().manual_seed(card.training.seed))
            model.validate(seen, "data (training split, augmented)")
        for part in ("valid", "test"):  # held-out data must also suit the model (e.g. symbols < C)
            if getattr(dataset, part) is not None:
                setattr(dataset, part, model.prepare(getattr(dataset, part), f"data ({part} split)"))
        check_compatible(model, card.objective)  # refuse an impossible pairing before building a guide
        guide = make_guide(model, card.guide.kind, dataset.train, init_scale=card.guide.init_scale,
                           generator=torch.Generator().manual_seed(card.training.seed))
        with torch.no_grad():  # autoguides create their parameters on the first call
            guide(_fit_input(guide, dataset.train)[:PROTOTYPE_ROWS], num_data=len(dataset.train))
        return cls(card, model, guide, dataset.transform, dataset)

    @classmethod
    def load(cls, run_dir: str | Path, *, model: Any = None, guide: Any = None) -> "Run":
        """Load a run directory written by :meth:`fit` (best parameters if early-stopped);
        ``model`` / ``guide``: the objects a run of your own model was fitted with from Python."""
        run_dir = Path(run_dir)
        if not (run_dir / "card.toml").is_file():
            raise RunDirError(f"{str(run_dir)!r} is not a pplvm run directory (no card.toml)")
        card = load_card(run_dir / "card.toml")
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        extras = ckpt["extras"]
        model = FAMILIES[card.model.family].from_config(card.model, int(extras["dim"]), model=model, guide=guide)
        proto = _from_state(extras["prototype"])
        guide = make_guide(model, card.guide.kind, _without_index(proto), init_scale=card.guide.init_scale,
                           num_data=extras.get("num_train"))
        with torch.no_grad():
            guide(proto)
        params = ckpt["best"] or ckpt
        model.load_state_dict(params["model"])
        guide.load_state_dict(params["guide"])
        run = cls(card, model, guide, Standardize(**extras["transform"]), None, run_dir)
        run.history = list(ckpt["trainer"]["history"])
        run.from_python = bool(extras.get("from_python"))
        return run

    # ----------------------------------------------------------------- training
    def fit(self, out: str | Path | None = None, *, callbacks: Sequence[Callback] = ()) -> "Run":
        """Train as the card's ``[training]`` says; with ``out``, write a run directory."""
        if self.dataset is None:
            raise RunDirError("this run has no data loaded; use Run.resume() to continue training")
        if out is not None:
            self.run_dir = Path(out)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").write_text("")
            dump_card(self.card, self.run_dir / "card.toml")
        self.trainer = self._trainer(callbacks)
        self.trainer.fit(_fit_input(self.guide, self.dataset.train), self.dataset.valid)
        self.history = self.trainer.state.history
        if self.run_dir is not None:
            self.write_artifacts()
        return self

    @classmethod
    def resume(cls, run_dir: str | Path, *, epochs: int | None = None, data: Any = None,
               callbacks: Sequence[Callback] = (), model: Any = None, guide: Any = None) -> "Run":
        """Continue an interrupted run from its last checkpoint; the result equals an
        uninterrupted run with the same seed. ``epochs`` raises the epoch budget."""
        run_dir = Path(run_dir)
        card = load_card(run_dir / "card.toml", {"training.epochs": epochs} if epochs else None)
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        if data is None and ckpt["extras"].get("from_python"):
            raise RunDirError("this run was fitted on data passed from Python; pass the same data= to resume")
        run = cls.from_card(card, data, model=model, guide=guide)
        run.run_dir = run_dir
        dump_card(card, run_dir / "card.toml")
        run.trainer = run._trainer(callbacks)
        train = _fit_input(run.guide, run.dataset.train)
        run.trainer.resume(train)
        run.trainer.fit(train, run.dataset.valid)
        run.history = run.trainer.state.history
        run.write_artifacts()
        return run

    def _trainer(self, callbacks: Sequence[Callback]) -> Trainer:
        d = self.dataset
        extras = {"dim": self.model.dim, "transform": self.transform.state_dict(),
                  "prototype": _to_state(_fit_input(self.guide, d.train)[:PROTOTYPE_ROWS]),
                  "num_train": len(d.train), "from_python": bool(d.info.get("from_python"))}
        # early stopping follows the exact held-out log-likelihood where the family has one,
        # else the held-out loss (a noisier Monte-Carlo estimate)
        monitor = "valid_log_likelihood" if self.model.likelihood == "exact" else "valid_loss"
        return Trainer(self.model, self.guide, self.objective, self.card.training, run_dir=self.run_dir,
                       valid_metrics=self._valid_metrics, extras=extras, callbacks=callbacks, monitor=monitor,
                       held_out_loss=not isinstance(self.guide, MeanFieldLocal),
                       schedule=make_schedule(self.model, self.card.objective), augment=d.augment)

    def _valid_metrics(self, valid: torch.Tensor) -> dict[str, float]:
        ll = self._model_log_likelihood(valid, self.params()) + self.transform.log_abs_det_jacobian(valid)
        return {"valid_log_likelihood": float(ll.mean())}

    def _model_log_likelihood(self, xt, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The family's ``log p(x | θ)``. A family whose marginal is an importance-sampling
        estimate over continuous local latents gets the amortized guide's ``q(z | x)`` as its
        proposal (see :class:`~pplvm.families.base.ContinuousLatentModel`)."""
        kind = self.model.likelihood
        if kind == "none":
            raise IncompatibleError(f"model.family = {self.card.model.family!r} has an implicit density: "
                                    "it has no log-likelihood (compare samples instead)")
        if kind == "estimate" and isinstance(self.guide, LocalGuide):
            return self.model.log_likelihood(xt, params, proposal=self.guide)
        return self.model.log_likelihood(xt, params)

    # ------------------------------------------------------------------ queries
    def _prepare(self, x: Any, name: str = "x"):
        return self.transform(self.model.prepare(x, name))

    @torch.no_grad()
    def params(self) -> dict[str, torch.Tensor]:
        """Point estimate of the global latents: the guide's median."""
        return {k: v.detach() for k, v in self.guide.median().items()}

    @torch.no_grad()
    def draws(self, num: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num`` posterior draws of the globals from the guide, each ``(num, *site_shape)``
        (empty when the family has no global latents: all its parameters are point estimates)."""
        if not self.model.global_sites:
            return {}
        # a local guide's globals are drawn from its globals' guide, which needs no data
        guide = self.guide.globals_guide if isinstance(self.guide, LocalGuide) else self.guide
        with pyro.poutine.seed(rng_seed=seed):
            out = Predictive(guide, num_samples=num, parallel=True,
                             return_sites=list(self.model.global_sites))()
        point = self.params()
        return {k: out[k].detach().reshape(num, *point[k].shape) for k in self.model.global_sites}

    @torch.no_grad()
    def log_likelihood(self, x: Any, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``log p(x_n | θ)`` per row of ``x`` (in the data's own units), ``(N,)``; exact for
        families whose ``likelihood`` is ``"exact"`` (else an estimate or a bound, as the family declares). ``params`` defaults to :meth:`params`."""
        xt = self._prepare(x)
        p = self.params() if params is None else params
        return self._model_log_likelihood(xt, p) + self.transform.log_abs_det_jacobian(xt)

    @torch.no_grad()
    def posterior(self, x: Any = None) -> dict[str, torch.Tensor]:
        """Posterior of the local latents given ``x`` (default: the training data).
        Enumerated families: exact marginals per local site (e.g. responsibilities ``(N, K)``).
        Continuous-latent families: the guide's ``q(z_n | x_n)`` as ``{"loc": (N, L), "scale":
        (N, L)}`` (the exact posterior for the ``exact`` guide; the ``meanfield`` guide has it
        for the training data only)."""
        if x is None and isinstance(self.guide, MeanFieldLocal):
            q = self.guide.training_posterior()  # needs no data: one q(z_n) per training row
            return {"loc": q.mean, "scale": q.stddev}
        xt = self._prepare(x) if x is not None else self._training_data()
        if self.model.enumerated:
            return self.model.local_marginals(xt, self.params())
        if not isinstance(self.guide, LocalGuide):
            raise IncompatibleError(f"guide.kind = {self.card.guide.kind!r} has no q(z | x) for the local latents")
        q = self.guide.local_posterior(xt)
        return {"loc": q.mean, "scale": q.stddev}

    def map_states(self, x: Any) -> dict[str, torch.Tensor]:
        """Most probable local latents given ``x`` (e.g. MAP assignments ``(N,)``)."""
        return self.model.map_locals(self._prepare(x), self.params())

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` new data ``(n, D)`` (sequences: ``(n, T, D)``) from the fitted model, in the
        data's own units."""
        with pyro.poutine.seed(rng_seed=seed):
            return self.transform.inverse(self.model.sample(n, self.params()))

    @torch.no_grad()
    def evaluate(self, x: Any) -> dict[str, Any]:
        ll = self.log_likelihood(x)
        return {"n": int(ll.numel()), "log_likelihood_mean": float(ll.mean()),
                "log_likelihood_sum": float(ll.sum()), "likelihood": self.model.likelihood,
                "exact": self.model.likelihood == "exact"}

    @torch.no_grad()
    def to_arviz(self, x: Any = None, *, seed: int = 0, posterior_predictive: bool = True):
        """arviz ``InferenceData`` of the fit on ``x`` (default: the training data)."""
        ev = self.card.evaluation
        xt = self._prepare(x) if x is not None else self._training_data()
        if len(xt) > ev.max_rows:
            xt = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))[: ev.max_rows]]
        s = ev.draws * ev.chains
        draws = self.draws(s, seed)
        ll = self._model_log_likelihood(xt, draws) + self.transform.log_abs_det_jacobian(xt)
        ll = ll.expand(s, *ll.shape[-1:])  # a family without global latents: the same for every draw
        ppc = None
        if posterior_predictive:
            with pyro.poutine.seed(rng_seed=seed + 1):
                ppc = torch.stack([
                    self.model.replicate(xt, {k: v[i] for k, v in draws.items()}) for i in range(s)
                ])
            ppc = _mask_padding(self.transform.inverse(ppc), xt)
        observed = _mask_padding(values(self.transform.inverse(xt)), xt)
        return inference_data(draws, ll, observed, ppc, chains=ev.chains, dims=self.model.site_dims)

    def _training_data(self) -> "torch.Tensor | Batch":
        """The training split as the model sees it (one fixed draw of an augmented split)."""
        if self.dataset is None:
            if self.from_python:
                raise RunDirError("this run was fitted on data passed from Python, which its run directory "
                                  "does not keep: pass the data explicitly")
            self.dataset = card_dataset(self.card)
        d, seed = self.dataset, self.card.training.seed
        return d.train if d.augment is None else d.augment(d.train, torch.Generator().manual_seed(seed))

    # ---------------------------------------------------------------- artifacts
    def write_artifacts(self) -> None:
        """Write inference data, plots and the text summary into the run directory."""
        d = self.run_dir
        idata = self.idata = self.to_arviz()
        tmp = d / ".inference_data.nc.tmp"
        idata.to_netcdf(str(tmp))
        tmp.replace(d / "inference_data.nc")
        plots.save_figure(plots.loss_plot(self.history), d / "loss.png")
        plots.save_figure(self.model_graph(), d / "model.png")
        if self.model.global_sites:
            plots.save_figure(plots.posterior_plot(idata, self.model.global_sites), d / "posterior.png")
        for name, fig in self.model.plots(self._training_data(), self.params()).items():
            plots.save_figure(fig, d / f"{name}.png")
        atomic_write_bytes(d / "summary.txt", self.summary_text(idata).encode())

    def model_graph(self):
        """The model drawn as a graph — sites, plates, observed vs latent, dependencies — from
        Pyro's model inspection on a few training rows: a matplotlib Figure."""
        x = self._training_data()[:PROTOTYPE_ROWS]
        relations = graph.model_relations(self.model, x)
        return graph.model_graph(relations, title=f"{self.card.name}: model.family = {self.card.model.family!r}")

    def summary_text(self, idata=None, max_size: int | None = None) -> str:
        """Header, held-out metrics and the arviz summary of the global latents; with
        ``max_size``, sites with more entries than that are named but not tabulated."""
        if idata is None:  # after fit(out=...), reuse what write_artifacts built
            idata = self.idata if self.idata is not None else self.to_arviz(posterior_predictive=False)
        c = self.card
        if self.model.global_sites:
            with warnings.catch_warnings():  # r_hat of constant entries (a MAP guide, LKJ zeros) is 0/0
                warnings.simplefilter("ignore", RuntimeWarning)
                shown = small_sites(idata, self.model.global_sites, max_size)
                table = arviz().summary(idata, var_names=shown, kind="all", round_to=4)
            table = table[table["sd"] > 0] if c.guide.kind != "map" else table[["mean"]]
            posterior = ["posterior of the global latents (guide draws):", table.to_string()]
            hidden = [v for v in self.model.global_sites if v not in shown]
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
            best = max((h for h in self.history if "valid_log_likelihood" in h), key=lambda h: h["valid_log_likelihood"])
            lines.append(f"held-out log-likelihood per datum: {best['valid_log_likelihood']:.6g} "
                         f"(epoch {best['epoch']}, {LIKELIHOOD_WORDS[self.model.likelihood]})")
        lines += ["", *posterior]
        return "\n".join(lines) + "\n"


def card_dataset(card: BaseModel) -> Dataset:
    """The card's data, split, as its family takes it."""
    return _labelled(load_dataset(card.data), card)


def _labelled(dataset: Dataset, card: BaseModel) -> Dataset:
    """The dataset as the card's family takes it: splits as ``Batch(x, y)`` if it uses labels."""
    if FAMILIES[card.model.family].uses_labels:
        return dataset.with_labels(f"model.family = {card.model.family!r}")
    return dataset


def _mask_padding(x: torch.Tensor, like: torch.Tensor | Batch) -> torch.Tensor:
    """Values ``(*S, N, T, ...)`` for export with the padded steps of the sequences in ``like``
    set to NaN (arviz: missing); unchanged for data that are not padded sequences."""
    if isinstance(like, Batch) and like.lengths is not None:
        mask = torch.arange(like.x.shape[1]) < like.lengths[:, None]  # (N, T)
        trailing = like.x.dim() - 2  # dims after (N, T)
        x = x.masked_fill(~mask.reshape(mask.shape + (1,) * trailing), float("nan"))
    return x


def _as_card(card: BaseModel | dict | str | Path, overrides=None) -> BaseModel:
    if isinstance(card, (str, Path)):
        return load_card(card, overrides)
    if isinstance(card, BaseModel):
        return card_from_dict(card_to_dict(card), overrides) if overrides else card
    return card_from_dict(card, overrides)


def fit(card: BaseModel | dict | str | Path, out: str | Path | None = None, *, data: Any = None,
        overrides: Sequence[str] | dict[str, Any] | None = None, model: Any = None, guide: Any = None) -> Run:
    """Build a run from ``card`` (TOML path, dict or validated card) and fit it; ``model`` /
    ``guide``: your own Pyro model (and guide) for ``model.family = "pyro"``."""
    return Run.from_card(_as_card(card, overrides), data, model=model, guide=guide).fit(out)


def load(run_dir: str | Path, *, model: Any = None, guide: Any = None) -> Run:
    return Run.load(run_dir, model=model, guide=guide)


def _fit_input(guide: torch.nn.Module, train):
    """The training data as the trainer feeds them: numbered rows (``Batch.index``) for a guide
    with parameters per training datum, else as they are."""
    return indexed(train) if isinstance(guide, MeanFieldLocal) else train


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
    atomic_write_bytes(path, buf.getvalue())
