"""Adversarial training: the update rule of families with an implicit density (GANs).

Each step on a minibatch of B real rows ``x`` makes ``critic_steps`` discriminator updates and
one generator update, each with its own optimiser (the card's ``[training]`` optimiser, lr,
schedule and clipping, built twice). With logits ``D(x)`` and ``x̃ = G(z)``, ``z ~ N(0, I)``:

============= ============================================ ===============================
name          discriminator loss                           generator loss
============= ============================================ ===============================
``gan``       ``softplus(-D(x)) + softplus(D(x̃))``         ``softplus(-D(x̃))`` (non-saturating)
``gan_hinge`` ``relu(1 - D(x)) + relu(1 + D(x̃))``          ``-D(x̃)``
``wgan_gp``   ``D(x̃) - D(x) + λ (|∇D(x̂)| - 1)²``,          ``-D(x̃)``
              ``x̂ = ε x + (1 - ε) x̃``, ε ~ U(0, 1)
============= ============================================ ===============================

(means over the batch). With ``model.r1_penalty = γ`` > 0 every discriminator loss adds the R1
penalty ``(γ/2) |∇ₓD(x)|²`` on the real rows (Mescheder et al. 2018); ``model.spectral_norm``
normalises the discriminator's weights (Miyato et al. 2018, in the family); with ``model.levels``
the real rows are dequantised first (:meth:`~pplvm.families.gan.GenerativeAdversarialNetwork.dequantize`).
The step's loss is the discriminator's, scaled to the data set (× N); each epoch logs the mean
``discriminator_loss`` and ``generator_loss`` per datum. The held-out loss is the unbiased MMD²
(:func:`pplvm.inference.mmd.mmd2_unbiased`, Gaussian kernel at the median distance) between up to
``model.mmd_samples`` held-out rows and as many samples (in data units) from fixed latent draws,
so "best parameters" and early stopping follow sample quality rather than the adversarial
losses, which do not measure it. Randomness comes from the global torch
RNG, which the loop checkpoints, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F

from ..data.base import values
from ..inference.mmd import gaussian_gram, median_bandwidth, mmd2_unbiased
from ..training.distributed import DataParallel
from ..training.rules import UpdateRule, make_lr_scheduler, make_optimizer
from .base import Objective

AdversarialLoss = Literal["gan", "gan_hinge", "wgan_gp"]


class AdversarialStep(UpdateRule):
    """Alternating discriminator / generator steps of a GAN family (see the module docstring).

    :param model: a family with ``prior(n)``, ``generator(z)``, ``critic(x)``, a ``decoder``
        (the generator's parameters) and a ``discriminator`` module, and ``config`` fields
        ``critic_steps``, ``gradient_penalty``, ``r1_penalty`` and ``mmd_samples``.
    """

    def __init__(self, model: torch.nn.Module, guide: torch.nn.Module, card: Any, loss: AdversarialLoss):
        self.model, self.guide, self.loss, self.config = model, guide, loss, card.training
        c = model.config
        self.critic_steps, self.penalty, self.mmd_rows = c.critic_steps, c.gradient_penalty, c.mmd_samples
        self.r1 = c.r1_penalty
        self.g_opt = self.d_opt = self.g_sched = self.d_sched = None
        self._sums: list | None = None  # discriminator and generator loss sums (on the device), batches
        self._dp: DataParallel | None = None  # several processes: gradients are all-reduced

    def setup(self, example, num_data: int) -> None:
        if self.g_opt is not None:
            return
        self.g_opt = make_optimizer(self.model.decoder.parameters(), self.config)
        self.d_opt = make_optimizer(self.model.discriminator.parameters(), self.config)
        self.g_sched = make_lr_scheduler(self.g_opt, self.config)
        self.d_sched = make_lr_scheduler(self.d_opt, self.config)

    # ------------------------------------------------------------------ losses
    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on ``real`` and (detached) ``fake`` rows ``(B, D)``, with the
        R1 penalty where ``model.r1_penalty`` > 0: a scalar."""
        if self.r1:
            real = real.detach().requires_grad_(True)
        d_real, d_fake = self.model.critic(real), self.model.critic(fake)
        if self.loss == "gan":
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.loss == "gan_hinge":
            loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:
            eps = torch.rand(len(real), 1, device=real.device, dtype=real.dtype)
            mixed = (eps * real.detach() + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model.critic(mixed).sum(), mixed, create_graph=True)
            loss = d_fake.mean() - d_real.mean() + self.penalty * (grad.norm(dim=-1) - 1).square().mean()
        if self.r1:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.r1 * grad.square().sum(-1).mean()
        return loss

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's loss on generated rows ``(B, D)`` (with gradients to G): a scalar."""
        d_fake = self.model.critic(fake)
        return F.softplus(-d_fake).mean() if self.loss == "gan" else -d_fake.mean()

    # ------------------------------------------------------------------- steps
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        model = self.model
        real = model.dequantize(values(batch))
        b = len(real)
        shape = (b, model.latent_dim)  # z ~ N(0, I): the prior, drawn directly
        for _ in range(self.critic_steps):
            with torch.no_grad():
                fake = model.generator(torch.randn(shape, device=real.device, dtype=real.dtype))
            d_loss = self.discriminator_loss(real, fake)
            self._update(self.d_opt, d_loss)
        g_loss = self.generator_loss(model.generator(torch.randn(shape, device=real.device, dtype=real.dtype)))
        self._update(self.g_opt, g_loss)
        d, g = d_loss.detach(), g_loss.detach()
        if self._sums is None:
            self._sums = [d, g, 1]
        else:
            self._sums = [self._sums[0] + d, self._sums[1] + g, self._sums[2] + 1]
        return d * num_data

    def _update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self._dp is not None:  # the global batch's gradient: shard means weighted by their rows
            self._dp.reduce_gradients(optimizer.param_groups[0]["params"])
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], self.config.clip_norm)
        optimizer.step()

    def end_epoch(self, epoch: int) -> dict[str, float]:
        out = {"lr": self.g_opt.param_groups[0]["lr"]}
        if self._sums is not None:
            d, g, n = self._sums
            out.update(discriminator_loss=float(d) / n, generator_loss=float(g) / n)
            self._sums = None
        self.g_sched.step()
        self.d_sched.step()
        return out

    def distribute(self, dp: DataParallel) -> None:
        self._dp = dp

    @torch.no_grad()
    def held_out_loss(self, data, num_data: int) -> torch.Tensor:
        """``num_data ×`` MMD² between (up to ``mmd_samples`` of) ``data`` and as many samples
        from fixed latent draws (a generator seeded 0: no global randomness is used)."""
        real = values(data)[: self.mmd_rows]
        g = torch.Generator(device=real.device).manual_seed(0)
        z = torch.randn(len(real), self.model.latent_dim, generator=g, device=real.device, dtype=real.dtype)
        fake = self.model.quantize(self.model.generator(z)).to(real.dtype)
        pooled = torch.cat([real, fake])
        return mmd2_unbiased(gaussian_gram(pooled, median_bandwidth(pooled)), len(real)) * num_data

    def parameters(self) -> Iterator[torch.Tensor]:
        return self.model.parameters()

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.g_opt.state_dict(),
            "discriminator": self.d_opt.state_dict(),
            "generator_schedule": self.g_sched.state_dict(),
            "discriminator_schedule": self.d_sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g_opt.load_state_dict(state["generator"])
        self.d_opt.load_state_dict(state["discriminator"])
        self.g_sched.load_state_dict(state["generator_schedule"])
        self.d_sched.load_state_dict(state["discriminator_schedule"])


class Adversarial(Objective):
    """Adversarial training of an implicit-density family: two optimisers, alternating steps
    (``gan``: non-saturating loss, ``gan_hinge``: hinge loss, ``wgan_gp``: Wasserstein critic with
    gradient penalty; model.critic_steps, model.gradient_penalty)."""

    names = ("gan", "gan_hinge", "wgan_gp")

    def refusal(self, model: Any, guide: Any) -> str | None:
        if model.likelihood != "none":
            return self.cannot(
                model,
                f"it trains a generator against a critic, for an implicit density; this family's likelihood is "
                f"{model.likelihood!r}: fit it by its bound or likelihood",
            )
        return None

    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> AdversarialStep:
        return AdversarialStep(model, guide, card, self.config.name)
