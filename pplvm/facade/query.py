"""Queries of a fitted run: point estimates and draws of the globals, log-likelihoods,
local posteriors, new samples, evaluation and the arviz export.

Each function here is one of :class:`~pplvm.run.Run`'s methods (``run`` is the run). Every
query computes on the run's device, in passes within ``evaluation.memory_mb``
(:mod:`pplvm.evaluation.memory`), with the model's and guide's networks in ``.eval()``
(:func:`~pplvm._modes.evaluated`), and returns host tensors.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.infer import Predictive

from .._modes import evaluated
from .._progress import progress
from ..config import check_count, check_seed
from ..data import Batch, values
from ..errors import IncompatibleError
from ..evaluation import memory
from ..evaluation.arviz import inference_data
from ..training.trainer import _host, to_device
from .build import _fit_input

if TYPE_CHECKING:
    from ..run import Run


def _prepare(run: Run, x: Any, name: str = "x"):
    return run.transform(run.model.prepare(x, name))


@torch.no_grad()
@evaluated
def params(run: Run) -> dict[str, torch.Tensor]:
    """Point estimate of the global latents (the guide's median): site -> value, on the host; empty
    where the family has none (its parameters are point estimates in the model).
    """
    return _host(run._params())


def _params(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in run.guide.median().items()}


@torch.no_grad()
@evaluated
def draws(run: Run, num: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``num`` posterior draws of the global latents from the guide, seeded by ``seed`` (the global
    RNG is left as it was): site -> ``(num, *site_shape)`` on the host; empty without globals.
    """
    num, seed = check_count(num, "num"), check_seed(seed, "seed")
    return _host(run._draws(num, seed))


def _draws(run: Run, num: int, seed: int = 0) -> dict[str, torch.Tensor]:
    if not run.model.global_sites:
        return {}
    # a local guide's globals are drawn from its globals' guide, which needs no data
    guide = run.guide_plugin.globals_guide(run.guide)
    with pyro.poutine.seed(rng_seed=seed):
        out = Predictive(guide, num_samples=num, parallel=True, return_sites=list(run.model.global_sites))()
    point = run._params()
    return {k: out[k].detach().reshape(num, *point[k].shape) for k in run.model.global_sites}


@torch.no_grad()
@evaluated
def log_likelihood(
    run: Run, x: Any, params: dict[str, torch.Tensor] | None = None, *, samples: int | None = None
) -> torch.Tensor:
    """``log p(x_n | θ)`` per row of ``x``, local latents marginalised, in the data's own units.

    Exact, an importance-sampled estimate (the run's guide as proposal) or a lower bound, as the
    family's ``likelihood`` declares (``"none"``: refused).

    Args:
        x: data as the model takes them (rows, sequences, a dict of arrays).
        params: the globals (default :meth:`params`); draws ``(*S, ...)`` give ``(*S, N)``.
        samples: importance samples per datum of an estimate (default ``evaluation.samples``).

    Returns:
        ``(N,)`` on the host.

    Raises:
        DataError: ``x`` does not fit the model.
        IncompatibleError: the family has no likelihood (a GAN).
    """
    xt, samples = run._prepare(x), None if samples is None else check_count(samples, "samples")
    p = run.params() if params is None else params
    return run._chunked_log_likelihood(xt, p, samples=samples) + run.transform.log_abs_det_jacobian(xt)


@torch.no_grad()
@evaluated
def posterior(run: Run, x: Any = None, *, samples: int | None = None) -> dict[str, torch.Tensor]:
    """Posterior of the local latents given ``x`` (default: the training data).

    Enumerated families: each local site's marginals (e.g. responsibilities ``(N, K)``; chains
    ``(N, T, K)``), exact, or importance-sampled with the run's guide as proposal where no closed
    form exists (``model.marginals == "estimate"``), standard errors under ``"<site>_stderr"``.
    Continuous-latent families: the guide's ``q(z_n | x_n)`` as ``{"loc": (N, L), "scale": (N, L)}``
    (exact for the ``exact`` guide; ``meanfield`` has it for the training data only).

    Args:
        x: data as the model takes them; None for the training data.
        samples: draws per datum of an importance-sampled posterior (default ``evaluation.samples``).

    Raises:
        IncompatibleError: the guide forms no ``q(z | x)`` for the local latents.
    """
    if x is None and run.traits.per_datum:
        q = run.guide.training_posterior()  # needs no data: one q(z_n) per training row
        return _host({"loc": q.mean, "scale": q.stddev})
    xt = run._prepare(x) if x is not None else run._training_data()
    if run.model.enumerated:
        params, options = run._params(), _marginals_options(run, samples)
        return run._by_rows(lambda part: run.model.local_marginals(part, params, **options), xt)
    if not run.traits.proposal:
        raise IncompatibleError(f"guide.kind = {run.card.guide.kind!r} has no q(z | x) for the local latents")
    q = run.guide.local_posterior(to_device(xt, run.device))
    return _host({"loc": q.mean, "scale": q.stddev})


@torch.no_grad()
@evaluated
def map_states(run: Run, x: Any, *, samples: int | None = None) -> dict[str, torch.Tensor]:
    """Most probable local latents given ``x`` (e.g. MAP assignments ``(N,)``, Viterbi paths): site
    -> values ``(N, ...)`` on the host; jointly, or, where :meth:`posterior` is an estimate (with
    ``samples`` draws per datum), each site's most probable value under it.
    """
    params, options = run._params(), _marginals_options(run, samples)
    return run._by_rows(lambda part: run.model.map_locals(part, params, **options), run._prepare(x))


def _marginals_options(run: Run, samples: int | None) -> dict[str, Any]:
    """What an importance-sampled ``local_marginals`` takes: the run's guide as proposal and the
    draws per datum (nothing for exact ones)."""
    if run.model.marginals != "estimate":
        return {}
    samples = run.card.evaluation.samples if samples is None else check_count(samples, "samples")
    return {"num_samples": samples, **({"proposal": run.guide} if run.traits.proposes else {})}


@torch.no_grad()
@evaluated
def sample(run: Run, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` new data from the fitted model, seeded by ``seed``, in the data's own units: ``(n, D)``
    (sequences: ``(n, T, D)``) on the host.
    """
    n, seed = check_count(n, "n"), check_seed(seed, "seed")
    with pyro.poutine.seed(rng_seed=seed):
        return run.transform.inverse(run.model.sample(n, run._params()).cpu())


@torch.no_grad()
@evaluated
def evaluate(
    run: Run, x: Any, *, samples: int | None = None, extra: tuple[str, ...] = (), extra_rows: int | None = 100
) -> dict[str, Any]:
    """Log-likelihood of ``x`` per datum and in total, and what the family adds to it.

    Sequences add ``log_likelihood_per_step``; a family that decomposes its likelihood
    (:meth:`~pplvm.families.base.LatentVariableModel.likelihood_terms`, a diffusion bound) adds
    each term's mean (``terms``, nats per datum) and ``bits_per_dim``.

    Args:
        x: data as the model takes them.
        samples: importance samples per datum of an estimate (as in :meth:`log_likelihood`).
        extra: likelihoods the family declares besides (``model.extra_likelihoods``, e.g. ``"ode"``).
        extra_rows: rows those are computed on, beside the main one on the same rows (None: all).

    Returns:
        A dict: ``n``, ``log_likelihood_mean``, ``log_likelihood_sum``, ``likelihood``, ``exact``,
        and where they apply ``steps``, ``log_likelihood_per_step``, ``terms``, ``bits_per_dim``,
        ``q_fit_steps``, ``extra``.

    Raises:
        IncompatibleError: an ``extra`` likelihood the family does not declare.
    """
    for name in extra:  # refused before anything is computed
        if name not in run.model.extra_likelihoods:
            offered = ", ".join(map(repr, run.model.extra_likelihoods)) or "none"
            raise IncompatibleError(
                f"extra likelihood {name!r}: model.family = {run.card.model.family!r} does not declare it "
                f"(it declares: {offered})"
            )
    if extra_rows is not None:
        extra_rows = check_count(extra_rows, "extra_rows")
    xt = run._prepare(x)
    terms = _host(run.model.likelihood_terms(to_device(xt, run.device), run._params()))
    if terms is None:
        ll = run.log_likelihood(x, samples=samples)
    else:
        ll = -torch.stack(list(terms.values()), -1).sum(-1) + run.transform.log_abs_det_jacobian(xt)
    out = {
        "n": int(ll.numel()),
        "log_likelihood_mean": float(ll.mean()),
        "log_likelihood_sum": float(ll.sum()),
        "likelihood": run.model.likelihood,
        "exact": run.model.likelihood == "exact",
    }
    if isinstance(xt, Batch) and xt.lengths is not None:  # sequences: per step (frame) as well
        out["steps"] = int(xt.lengths.sum())
        out["log_likelihood_per_step"] = float(ll.sum()) / out["steps"]
    if run.model.likelihood == "estimate" and run.traits.held_out_steps:
        out["q_fit_steps"] = run.traits.held_out_steps  # the rows' q(z_n) was fitted this long first
    if terms is not None:
        out["terms"] = {k: float(v.mean()) for k, v in terms.items()}
        out["bits_per_dim"] = -float(ll.mean()) / (run.model.dim * math.log(2))
    if extra:
        out["extra"] = {name: _extra_likelihood(run, xt, ll, name, extra_rows) for name in extra}
    return out


def _extra_likelihood(run: Run, xt, main: torch.Tensor, name: str, rows: int | None) -> dict[str, Any]:
    """The family's extra likelihood ``name`` on the first ``rows`` rows of ``xt`` beside the main
    one (``main``, per datum) on the same rows: means per datum with their standard errors over
    the rows (which include each datum's own estimation noise), in nats and bits/dim, and the CPU
    seconds it took."""
    import time

    n = len(xt) if rows is None else min(rows, len(xt))
    part, start = xt[:n], time.process_time()
    ll = run._chunked_log_likelihood(part, run._params(), kind=name) + run.transform.log_abs_det_jacobian(part)
    seconds = time.process_time() - start
    per_bit = run.model.dim * math.log(2)

    def stats(v: torch.Tensor, prefix: str) -> dict[str, float]:
        se = float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else math.nan
        return {
            f"{prefix}log_likelihood_mean": float(v.mean()),
            f"{prefix}stderr": se,
            f"{prefix}bits_per_dim": -float(v.mean()) / per_bit,
            f"{prefix}bits_per_dim_stderr": se / per_bit,
        }

    return {
        "description": run.model.extra_likelihoods[name],
        "n": n,
        **stats(ll.double(), ""),
        **stats(main[:n].double(), "main_"),
        "cpu_seconds": seconds,
    }


def export_shape(run: Run) -> tuple[int, int]:
    """``(chains, draws per chain)`` of the arviz export: ``evaluation.chains`` x
    ``evaluation.draws`` independent guide draws, or one draw of one chain where the guide
    declares its globals a point estimate (``GuideTraits.point_estimate``: MAP, AutoDelta, EM),
    whose draws would all be the same value."""
    ev = run.card.evaluation
    return (1, 1) if run.traits.point_estimate else (ev.chains, ev.draws)


@torch.no_grad()
@evaluated
def to_arviz(run: Run, x: Any = None, *, seed: int = 0, posterior_predictive: bool = True, log_likelihood: bool = True):
    """arviz ``InferenceData`` of the fit on ``x`` (default: the training data).

    ``evaluation.chains`` x ``evaluation.draws`` guide draws of the globals (one draw where the
    guide holds a point estimate), on at most ``evaluation.max_rows`` rows.

    Args:
        x: data as the model takes them; None for the training data.
        seed: seed of the draws and of the rows kept.
        posterior_predictive: include replicates of ``x``.
        log_likelihood: include the pointwise log-likelihood (for LOO; never for a GAN).
    """
    ev = run.card.evaluation
    chains, per_chain = run._export_shape()
    xt = run._prepare(x) if x is not None else run._training_data()
    if x is None and run.model.likelihood == "estimate":  # a per-datum guide proposes from each row's own q(z_n)
        xt = _fit_input(run.traits, xt)
    if len(xt) > ev.max_rows:
        xt = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))[: ev.max_rows]]
    s = chains * per_chain
    draws = run._draws(s, seed)  # on the run's device; exported from the host
    ll = None  # an implicit density ("none") has no log_likelihood group
    if log_likelihood and run.model.likelihood != "none":
        ll = run._chunked_log_likelihood(xt, draws, s) + run.transform.log_abs_det_jacobian(xt)
        ll = ll.expand(s, *ll.shape[-1:])  # a family without global latents: the same for every draw
    ppc = run._replicates(xt, draws, seed + 1) if posterior_predictive else None  # None: over the bound
    observed = _mask_padding(values(run.transform.inverse(xt)), xt)
    return inference_data(_host(draws), ll, observed, ppc, chains=chains, dims=run.model.site_dims)


def _replicates(run: Run, xt, draws: dict[str, torch.Tensor], seed: int) -> torch.Tensor | None:
    """Posterior-predictive replicates of ``xt`` in the data's units, padding NaN:
    ``(chains · d, *values(xt).shape)`` for the first ``d`` draws of each of
    :func:`export_shape`'s chains, ``d`` as many as fit a quarter of ``evaluation.memory_mb``
    (all when they fit; None — no posterior_predictive group — when not even one per chain
    does), each drawn in passes over chunks of rows (:mod:`pplvm.evaluation.memory`)."""
    ev = run.card.evaluation
    chains, draws_per_chain = run._export_shape()
    shape = values(xt).shape
    per_chain = min(draws_per_chain, memory.budget_elements(ev.memory_mb) // max(1, chains * shape.numel()))
    if per_chain < 1:
        return None
    out = torch.empty((chains * per_chain, *shape), dtype=values(xt).dtype)
    rows = run._rows_per_pass(xt)
    with (
        pyro.poutine.seed(rng_seed=seed),
        memory.reusing_memory(ev.memory_mb),
        progress(len(out), "posterior predictive", unit="draw") as bar,
    ):
        for j, i in enumerate(c * draws_per_chain + d for c in range(chains) for d in range(per_chain)):
            p = {k: v[i] for k, v in draws.items()}
            for rs in memory.spans(len(xt), rows):
                rep = run.model.replicate(to_device(xt[rs], run.device), p).cpu()
                out[j, rs] = _mask_padding(run.transform.inverse(rep), xt[rs])
            bar.update(1)
    return out


def _training_data(run: Run) -> "torch.Tensor | Batch":
    """The training split as the model sees it (one fixed draw of an augmented split)."""
    d, seed = run.dataset, run.card.training.seed  # a loaded run reads its card's data again
    return d.train if d.augment is None else d.augment(d.train, torch.Generator().manual_seed(seed))


def _model_log_likelihood(
    run: Run, xt, params: dict[str, torch.Tensor], samples: int | None = None, kind: str | None = None
) -> torch.Tensor:
    """The family's ``log p(x | θ)``. A family whose marginal is an importance-sampling
    estimate over continuous local latents gets the amortized guide's ``q(z | x)`` as its
    proposal and ``samples`` (default ``evaluation.samples``) draws per datum (see
    :class:`~pplvm.families.base.ContinuousLatentModel`). ``kind``: one of the family's
    ``extra_likelihoods`` instead of its main one."""
    if kind is not None:
        return run.model.log_likelihood(xt, params, kind=kind)
    kind = run.model.likelihood
    if kind == "none":
        raise IncompatibleError(
            f"model.family = {run.card.model.family!r} has an implicit density: "
            "it has no log-likelihood (compare samples instead)"
        )
    options = {"num_samples": samples or run.card.evaluation.samples} if kind == "estimate" else {}
    if kind == "estimate" and run.traits.proposes:  # a per-datum guide fits a q to rows it has none for
        options["proposal"], xt = run.guide_plugin.proposal(run.guide, run.model, xt, run._params())
    return run.model.log_likelihood(xt, params, **options)


def _chunked_log_likelihood(
    run: Run,
    xt,
    params: dict[str, torch.Tensor],
    num_draws: int | None = None,
    samples: int | None = None,
    kind: str | None = None,
) -> torch.Tensor:
    """:meth:`_model_log_likelihood` in passes over chunks of rows and, with ``num_draws``
    (the leading dim of every ``params`` entry), of draws, each pass within
    ``evaluation.memory_mb`` (:mod:`pplvm.evaluation.memory`): ``(S, N)``, else ``(N,)``,
    computed on the run's device and returned on the host. ``kind``: an extra likelihood."""
    params = {k: v.to(run.device) for k, v in params.items()}
    n, per_draw = len(xt), bool(params) and num_draws is not None
    draws, rows = memory.plan(
        num_draws if per_draw else 1, n, run.model.evaluation_cost(xt), run.card.evaluation.memory_mb
    )
    blocks = []
    draw_spans, row_spans = list(memory.spans(num_draws if per_draw else 1, draws)), list(memory.spans(n, rows))
    passes, label = len(draw_spans) * len(row_spans), kind or "log-likelihood"
    with memory.reusing_memory(run.card.evaluation.memory_mb), progress(passes, label, unit="pass") as bar:
        for ds in draw_spans:
            p = {k: v[ds] for k, v in params.items()} if per_draw else params
            parts = []
            for rs in row_spans:
                parts.append(run._model_log_likelihood(to_device(xt[rs], run.device), p, samples, kind).cpu())
                bar.update(1)
            blocks.append(torch.cat(parts, -1))
    return torch.cat(blocks, 0) if per_draw else blocks[0]


def _rows_per_pass(run: Run, xt) -> int:
    """Data per pass of a point-estimate query (local posteriors, MAP states) within
    ``evaluation.memory_mb``."""
    return memory.plan(1, len(xt), run.model.evaluation_cost(xt), run.card.evaluation.memory_mb)[1]


def _by_rows(run: Run, fn, xt) -> dict[str, torch.Tensor]:
    """``fn(chunk) -> {name: (n, ...)}`` over chunks of rows of ``xt`` (each moved to the
    run's device), concatenated on the host."""
    parts = [_host(fn(to_device(xt[rs], run.device))) for rs in memory.spans(len(xt), run._rows_per_pass(xt))]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _mask_padding(x: torch.Tensor, like: torch.Tensor | Batch) -> torch.Tensor:
    """Values ``(*S, N, T, ...)`` for export with the padded steps of the sequences in ``like``
    set to NaN (arviz: missing); unchanged for data that are not padded sequences."""
    if isinstance(like, Batch) and like.lengths is not None:
        mask = torch.arange(like.x.shape[1]) < like.lengths[:, None]  # (N, T)
        trailing = like.x.dim() - 2  # dims after (N, T)
        x = x.masked_fill(~mask.reshape(mask.shape + (1,) * trailing), float("nan"))
    return x
