"""Tools on the latent space of a fitted amortized model (VAE, CVAE, and any family with the
``amortized`` guide and a ``decode(z, side)`` method).

Every function takes a fitted :class:`pplvm.Run` and data in the data's own units (a ``(N, D)``
array, or ``Batch(x, y)`` / ``(x, y)`` for a conditional model) and returns tensors in those
units, or a ``matplotlib.figure.Figure``::

    loc, scale = encode(run, x)                  # q(z | x): (N, L) each
    x_hat = reconstruct(run, x)                  # decoder mean at the encoder mean, (N, D)
    path = interpolate(run, x[:1], x[1:2], 8)    # (8, D)
    path = interpolate_latent(run, za, zb, 8)    # (8, D) between latent points (also a GAN's)
    row = traverse(run, x[:1], dim=0, values=torch.linspace(-3, 3, 7))
    fig = latent_map(run, x, labels)
    filled = impute(run, x, observed_mask)       # inpainting of the missing pixels
    score = anomaly_score(run, x)                # -ELBO per datum (higher = more anomalous)

Decoded images are decoder means (``p(x | z).mean``: pixel probabilities for a Bernoulli
decoder); randomness comes from an explicit ``generator``.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Literal, Sequence

import torch
from matplotlib.figure import Figure
from pyro.distributions.kl import kl_divergence

from .._modes import evaluated
from ..data.base import Batch, values
from ..errors import IncompatibleError, PplvmError
from ..families.base import LatentDecoder
from ..guides.amortized import AmortizedNormal


def _on_host(fn):
    """Latent tools are small interactive queries on host tensors: on a run whose model lives
    on an accelerator they work on host copies of its model and guide (the run is unchanged),
    with their networks in ``.eval()`` as every query."""

    @functools.wraps(fn)
    def wrapper(run, *args, **kwargs):
        if run.device.type != "cpu":
            view = copy.copy(run)
            view.model, view.guide = copy.deepcopy((run.model, run.guide))  # the guide keeps its model
            view.model.to("cpu")
            view.guide.to("cpu")
            run = view
        return evaluated(fn)(run, *args, **kwargs)

    return wrapper


def _parts(run):
    if not isinstance(run.guide, AmortizedNormal):
        raise IncompatibleError(f"latent tools need the amortized guide; this run's guide is {run.card.guide.kind!r}")
    return run.model, run.guide


def _data(run, x):
    """Prepared and transformed data; a single 1-D row becomes ``(1, D)``."""
    if not isinstance(x, (Batch, tuple)) and torch.as_tensor(x).dim() == 1:
        x = torch.as_tensor(x)[None]
    return run._prepare(x)


@torch.no_grad()
@_on_host
def encode(run, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of ``q(z | x)``, each ``(N, L)``."""
    _, guide = _parts(run)
    q = guide.local_posterior(_data(run, x))
    return q.base_dist.loc, q.base_dist.scale


def _decode(run, z: torch.Tensor, side: torch.Tensor | None):
    """``p(x | z, side)`` at the run's point estimate of the global latents (a Bayesian
    decoder's weights; none for most decoders)."""
    return _decoder(run).decode(z, side, run._params())


def _decoder(run) -> LatentDecoder:
    if not isinstance(run.model, LatentDecoder):
        raise IncompatibleError(f"model.family = {run.card.model.family!r} has no decoder from a latent z")
    return run.model


@torch.no_grad()
@_on_host
def decode(run, z: torch.Tensor, y: Any = None) -> torch.Tensor:
    """Decoder means ``E[x | z (, y)]`` for ``z`` ``(N, L)``, in data units, ``(N, D)``. Any
    family with a decoder (:class:`~pplvm.families.base.LatentDecoder`: VAE, CVAE, GAN)."""
    model = _decoder(run)
    side = None
    if model.side.kind != "none":
        if y is None:
            raise PplvmError("decode: this model conditions on y; pass y (labels or covariates)")
        side = model.side.features(model.side.check(y, len(z), "y"))
    return run.transform.inverse(_decode(run, z, side).mean)


@torch.no_grad()
@_on_host
def reconstruct(run, x: Any, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoder mean at ``z = E_q[z]`` (or at one draw ``z ~ q(z | x)`` with ``sample``), ``(N, D)``."""
    model, guide = _parts(run)
    data = _data(run, x)
    q = guide.local_posterior(data)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    z = loc + scale * torch.randn(loc.shape, generator=_gen(generator)) if sample else loc
    return run.transform.inverse(_decode(run, z, model.side(data)).mean)


@torch.no_grad()
@_on_host
def interpolate(run, a: Any, b: Any, steps: int = 8) -> torch.Tensor:
    """Decoded points on the straight line between the encoder means of one datum ``a`` and one
    datum ``b`` (each ``(1, D)`` or a one-row Batch), ends included: ``(steps, D)``. A
    conditional model decodes each point with ``a``'s side information."""
    model, _ = _parts(run)
    za, zb = encode(run, a)[0], encode(run, b)[0]
    t = torch.linspace(0, 1, steps)[:, None]
    side = _repeat(model.side(_data(run, a)), steps)
    return run.transform.inverse(_decode(run, (1 - t) * za + t * zb, side).mean)


@torch.no_grad()
@_on_host
def traverse(run, x: Any, dim: int, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Decode the encoder mean of one datum ``x`` with latent dimension ``dim`` set to each of
    ``values`` in turn: ``(len(values), D)``."""
    model, _ = _parts(run)
    if not 0 <= dim < model.latent_dim:
        raise PplvmError(f"traverse: dim must lie in 0..{model.latent_dim - 1}, got {dim}")
    vals = torch.as_tensor(values, dtype=torch.get_default_dtype())
    z = encode(run, x)[0].repeat(len(vals), 1)
    z[:, dim] = vals
    return run.transform.inverse(_decode(run, z, _repeat(model.side(_data(run, x)), len(vals))).mean)


@torch.no_grad()
@_on_host
def interpolate_latent(run, za: torch.Tensor, zb: torch.Tensor, steps: int = 8, y: Any = None) -> torch.Tensor:
    """Decoded points on the straight line from latent ``za`` to ``zb`` (each ``(L,)``), ends
    included: ``(steps, D)``. Needs no encoder (a GAN's latent space; prior draws)."""
    t = torch.linspace(0, 1, steps)[:, None]
    return decode(run, (1 - t) * torch.as_tensor(za) + t * torch.as_tensor(zb), _repeat_y(y, steps))


@torch.no_grad()
@_on_host
def traverse_latent(
    run, z: torch.Tensor, dim: int, values: Sequence[float] | torch.Tensor, y: Any = None
) -> torch.Tensor:
    """Decode latent ``z`` ``(L,)`` with dimension ``dim`` set to each of ``values``: ``(len(values), D)``."""
    model = _decoder(run)
    if not 0 <= dim < model.latent_dim:
        raise PplvmError(f"traverse_latent: dim must lie in 0..{model.latent_dim - 1}, got {dim}")
    vals = torch.as_tensor(values, dtype=torch.get_default_dtype())
    zs = torch.as_tensor(z, dtype=torch.get_default_dtype()).repeat(len(vals), 1)
    zs[:, dim] = vals
    return decode(run, zs, _repeat_y(y, len(vals)))


def _repeat_y(y: Any, n: int) -> Any:
    return None if y is None else torch.as_tensor(y).reshape(1, -1).expand(n, -1).squeeze(-1)


@torch.no_grad()
@_on_host
def arithmetic(run, a: Any, b: Any, c: Any) -> torch.Tensor:
    """``decode(z_a - z_b + z_c)`` with encoder means (one row each): "a is to b as ? is to c",
    ``(1, D)``; a conditional model decodes with ``c``'s side information."""
    model, _ = _parts(run)
    z = encode(run, a)[0] - encode(run, b)[0] + encode(run, c)[0]
    return run.transform.inverse(_decode(run, z, model.side(_data(run, c))).mean)


@torch.no_grad()
@_on_host
def impute(
    run, x: Any, observed: Any, *, method: Literal["iterate", "map"] = "map", iterations: int = 50, lr: float = 0.05
) -> torch.Tensor:
    """Inpaint the missing entries of ``x`` (``observed``: ``(N, D)`` bool, True = seen; missing
    entries of ``x`` may hold anything, NaN included). Observed entries come back unchanged,
    ``(N, D)``. The gaps start at the column means of the observed entries (mean imputation), or
    where a column has none, at the decoder mean at ``z = 0``.

    ``iterate`` (Rezende et al. 2014, with means): ``iterations`` times, encode the filled datum,
    decode the encoder mean and overwrite the gaps with the decoder mean. ``map``: condition on
    the observed entries only: from the encoder mean of the filled datum, maximise
    ``log p(z) + Σ_{d observed} log p(x_d | z)`` over z by Adam (``iterations`` steps of ``lr``),
    then decode."""
    model, guide = _parts(run)
    raw = torch.as_tensor(
        values(x) if isinstance(x, Batch) else (x[0] if isinstance(x, tuple) else x), dtype=torch.get_default_dtype()
    )
    obs = torch.as_tensor(observed, dtype=torch.bool)
    if obs.shape != raw.shape:
        raise PplvmError(f"impute: observed has shape {tuple(obs.shape)} but x has {tuple(raw.shape)}")
    seen = torch.where(obs, raw, torch.zeros_like(raw))
    data = _data(run, _with_values(x, seen))  # checked with the gaps at 0, a value every likelihood admits
    side = model.side(data)
    # start: the column mean of the observed entries; where a column has none, the decoder mean at z = 0
    count = obs.sum(0)
    col_mean = values(run.transform(seen.sum(0) / count.clamp_min(1)))
    prior_mean = _decode(run, torch.zeros(len(raw), model.latent_dim), side).mean
    keep = torch.where(obs, values(data), torch.where(count > 0, col_mean, prior_mean))
    if method == "iterate":
        current = keep
        for _ in range(iterations):
            z = guide.local_posterior(_with_values(data, current)).base_dist.loc
            current = torch.where(obs, keep, _decode(run, z, side).mean)
    elif method == "map":
        z = guide.local_posterior(_with_values(data, keep)).base_dist.loc.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for _ in range(iterations):
                opt.zero_grad()
                per_entry = _decode(run, z, side).base_dist.log_prob(values(data))  # gaps hold 0: masked out
                loss = -(model.prior(len(z)).log_prob(z) + (per_entry * obs).sum(-1)).sum()
                loss.backward()
                opt.step()
        current = torch.where(obs, keep, _decode(run, z.detach(), side).mean)
    else:
        raise PplvmError(f"impute: method must be 'iterate' or 'map', got {method!r}")
    return run.transform.inverse(current)


@torch.no_grad()
@_on_host
def anomaly_score(
    run,
    x: Any,
    *,
    kind: Literal["elbo", "nll"] = "elbo",
    num_samples: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-datum anomaly score, ``(N,)``, higher = less likely under the model.

    ``elbo``: ``-ELBO(x) = -E_q[log p(x | z)] + KL(q(z | x) || p(z))`` with the KL in closed form
    and ``num_samples`` draws for the reconstruction term. ``nll``: ``-log p̂(x)``, the run's
    importance-sampled log-likelihood estimate (tighter, costlier)."""
    model, guide = _parts(run)
    if kind == "nll":
        return -run.log_likelihood(x)
    if kind != "elbo":
        raise PplvmError(f"anomaly_score: kind must be 'elbo' or 'nll', got {kind!r}")
    data = _data(run, x)
    q = guide.local_posterior(data)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    z = loc + scale * torch.randn((num_samples, *loc.shape), generator=_gen(generator))
    recon = _decode(run, z, model.side(data)).log_prob(values(data)).mean(0)
    kl = kl_divergence(q, model.prior(len(loc)))
    return -(recon - kl) - run.transform.log_abs_det_jacobian(data)


@torch.no_grad()
@_on_host
def latent_map(run, x: Any, labels: Any = None, *, title: str = "") -> Figure:
    """Encoder means of ``x`` in 2-D (the first two latent dimensions when L = 2, else their top
    two principal axes), coloured by ``labels`` if given."""
    from ..evaluation.plots import project_2d

    loc = encode(run, x)[0]
    if loc.shape[1] == 1:
        loc = torch.cat([loc, torch.zeros_like(loc)], 1)
    (xy,), (lx, ly) = project_2d(loc)
    lx, ly = ("z 1", "z 2") if loc.shape[1] == 2 else (f"latent {lx}", f"latent {ly}")
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    else:
        lab = torch.as_tensor(labels)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=lab, cmap="tab10", s=6, alpha=0.7)
        fig.colorbar(points, ax=ax, label="label")
    ax.set(xlabel=lx, ylabel=ly, title=title or "encoder means")
    return fig


def _gen(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _repeat(side: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return side.expand(n, side.shape[-1]) if side is not None else None


def _with_values(data: Any, x: torch.Tensor) -> Any:
    if isinstance(data, Batch):
        return data.replace(x=x)
    if isinstance(data, tuple):
        return (x, data[1])
    return x


__all__ = [
    "anomaly_score",
    "arithmetic",
    "decode",
    "encode",
    "impute",
    "interpolate",
    "latent_map",
    "reconstruct",
    "traverse",
]
