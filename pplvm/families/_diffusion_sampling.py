"""Drawing from a diffusion model (:class:`~pplvm.families.diffusion.Diffusion`): the ancestral
sampler, the deterministic DDIM sampler (Song et al. 2021, η = 0) and its inversion, spherical
interpolation between DDIM latents, and the figures of samples. Each function takes the model;
the model's methods of the same names are the API."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

from .._progress import progress
from ..data.base import values

if TYPE_CHECKING:
    from .diffusion import Diffusion


@torch.no_grad()
def generate(
    model: Diffusion,
    n: int,
    *,
    sampler: Literal["ancestral", "ddim"] = "ancestral",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    z: torch.Tensor | None = None,
    mean: bool = True,
) -> torch.Tensor:
    """:meth:`Diffusion.generate`: ``n`` new data ``(n, D)`` in data units."""
    like = z if z is not None else next(model.parameters())
    g = generator if generator is not None else torch.Generator(device=like.device).manual_seed(0)
    if z is None:
        z = torch.randn(n, model.dim, generator=g, dtype=like.dtype, device=like.device)
    if sampler == "ddim":
        return model.from_chain(ddim(model, z, ddim_steps(model, steps), inverse=False)).clamp(
            *(0, 1) if model.config.decoder == "discretized" else (-math.inf, math.inf)
        )
    with progress(model.steps - 1, "sampling", unit="step") as bar:
        for t in range(model.steps, 1, -1):
            m, logvar = model.reverse_params(z, torch.full((n,), t, device=z.device))
            z = m + (0.5 * logvar).exp() * torch.randn(z.shape, generator=g, dtype=z.dtype, device=z.device)
            bar.update(1)
    p = model.decode(z)
    if mean:
        return p.mean
    return model.decoder_dist(*model.reverse_params(z, torch.ones(n, dtype=torch.long, device=z.device))).sample()


def ddim_steps(model: Diffusion, steps: int | None) -> list[int]:
    """``steps`` of the model's T steps, evenly spaced (all T when None), ascending."""
    k = model.steps if steps is None else steps
    if not 1 <= k <= model.steps:
        raise ValueError(f"steps: expected 1..{model.steps} DDIM steps, got {k}")
    return sorted({int(round(v)) for v in torch.linspace(1, model.steps, k).tolist()})


def ddim(model: Diffusion, z: torch.Tensor, ts: list[int], inverse: bool) -> torch.Tensor:
    """Deterministic DDIM moves (η = 0) along the steps ``ts`` (ascending, 0 = the datum):
    down from ``z_T`` to ``x̂_0`` or, with ``inverse``, up from ``y`` to ``z_T``. Each move
    from step a to step b predicts ``ε̂`` at ``a`` (at ``ts[0]`` when a = 0) and sets
    ``z_b = √ᾱ_b x̂_0 + √(1 - ᾱ_b) ε̂`` with ``x̂_0 = (z_a - √(1 - ᾱ_a) ε̂) / √ᾱ_a``."""
    s = model.tables(z)
    path = [0, *ts] if inverse else [*ts[::-1], 0]
    with progress(len(path) - 1, "DDIM inversion" if inverse else "DDIM sampling", unit="step") as bar:
        for a, b in zip(path[:-1], path[1:]):
            eps, _ = model.predict(z, torch.full((len(z),), max(a, ts[0]), device=z.device))
            x0 = (z - (1 - s.alphas_bar[a]).sqrt() * eps) / s.alphas_bar[a].sqrt()
            z = s.alphas_bar[b].sqrt() * x0 + (1 - s.alphas_bar[b]).sqrt() * eps
            bar.update(1)
    return z


@torch.no_grad()
def interpolate(
    model: Diffusion, x_a: torch.Tensor, x_b: torch.Tensor, num: int = 8, *, steps: int | None = None
) -> torch.Tensor:
    """:meth:`Diffusion.interpolate`: ``(num, D)``."""
    za, zb = model.encode(torch.stack([x_a, x_b]), steps=steps)
    omega = torch.arccos((za @ zb / (za.norm() * zb.norm())).clamp(-1, 1))
    w = torch.linspace(0, 1, num, dtype=za.dtype, device=za.device)[:, None]
    z = (torch.sin((1 - w) * omega) * za + torch.sin(w * omega) * zb) / torch.sin(omega).clamp_min(1e-8)
    return model.generate(num, sampler="ddim", steps=steps, z=z)


#: the figure after a fit: ancestral samples up to this many steps; beyond, DDIM on FIGURE_DDIM
FIGURE_STEPS = 250
FIGURE_DDIM = 50
#: images in the figure: 64 small ones (up to this many values each, e.g. 8 x 8), else 16
FIGURE_SMALL = 256


def plots(model: Diffusion, x) -> dict:
    """:meth:`Diffusion.plots`: data and ancestral samples (2-D data), or a grid of samples
    (images: 64, or 16 above :data:`FIGURE_SMALL` values; ancestral up to
    :data:`FIGURE_STEPS` steps, else DDIM on :data:`FIGURE_DDIM` of the T steps, so the figure after a
    long chain costs a bounded number of network calls)."""
    figs = {}
    device = next(model.parameters()).device  # samples are drawn where the model lives
    if model.dim == 2:
        from ..evaluation.plots import samples_scatter

        g = torch.Generator(device=device).manual_seed(0)
        figs["samples"] = samples_scatter(
            values(x)[:2000].cpu(), model.generate(1000, generator=g).cpu(), title="data and ancestral samples"
        )
    if model.image_shape is not None:
        from ..evaluation.plots import image_grid

        g = torch.Generator(device=device).manual_seed(0)
        n = 64 if model.dim <= FIGURE_SMALL else 16
        if model.steps <= FIGURE_STEPS:
            samples, title = model.generate(n, generator=g), "ancestral samples"
        else:
            samples = model.generate(n, generator=g, sampler="ddim", steps=FIGURE_DDIM)
            title = f"DDIM samples ({FIGURE_DDIM} of the {model.steps} steps)"
        figs["samples"] = image_grid(samples.cpu().clamp(0, 1), model.image_shape, title=title)
    return figs
