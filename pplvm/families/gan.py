"""Generative adversarial networks: an implicit decoder, trained by a discriminator.

Generative model (L latent dimensions, D observed)::

    z_n ~ Normal(0, I_L)          x_n = G_θ(z_n)          (a point mass: no density p(x))

``G_θ`` is the same decoder :class:`~pyro.nn.PyroModule` a VAE uses (:mod:`pplvm.decoders`,
``mlp`` or ``conv``), read through its mean: ``likelihood = "bernoulli"`` gives outputs in
(0, 1) (images), ``"gaussian"`` unbounded outputs (tables). A discriminator ``D_ψ`` (an MLP, or
the conv encoder's trunk and a linear head) scores data against generated samples, and the two
are trained by alternating steps with two optimisers (:mod:`pplvm.objectives.adversarial`):
``objective.name = "gan"`` (the non-saturating loss, Goodfellow et al. 2014), ``"gan_hinge"``
(Lim & Ye 2017; Miyato et al. 2018) or ``"wgan_gp"`` (Gulrajani et al. 2017).

The density is implicit, so ``likelihood = "none"``: every log-likelihood (``log_likelihood``,
``pplvm evaluate``, the arviz ``log_likelihood`` group, LOO) is refused or left out, and the
fit is judged by two-sample tests against held-out data (:mod:`pplvm.evaluation.two_sample`;
the held-out loss the trainer logs is the MMD² between held-out data and generated samples).
Sampling, latent interpolation and traversal work as for a VAE.

Pyro sites: ``z`` (local, in the ``data`` plate) and ``obs`` (a ``Delta`` at ``G_θ(z)``).
"""

from __future__ import annotations

from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field
from torch import nn

from ..data.base import Batch, as_matrix, values
from ..decoders import Decoder, NetworkConfig, image_shape, make_decoder, user
from ..decoders.conv import ConvTrunk
from ..decoders.mlp import Activation, mlp
from ..decoders.side import SideInformation
from ..errors import CardError, DataError, IncompatibleError
from .base import FamilyConfig, LatentDecoder, LatentVariableModel


class GANConfig(FamilyConfig, NetworkConfig):
    family: Literal["gan"] = "gan"
    discriminator_hidden: list[int] = Field([200, 200], description="hidden widths of the discriminator")
    discriminator_activation: Activation = Field(
        "relu", description="nonlinearity of the discriminator's hidden layers"
    )
    critic_steps: int = Field(1, ge=1, description="discriminator steps per generator step (5 is usual for wgan_gp)")
    gradient_penalty: float = Field(10.0, ge=0, description="wgan_gp: weight λ of (|∇D| - 1)²")
    spectral_norm: bool = Field(
        False,
        description="divide each discriminator weight by its largest singular value (one power iteration per "
        "step; Miyato et al. 2018), so the critic is 1-Lipschitz per layer",
    )
    r1_penalty: float = Field(
        0.0,
        ge=0,
        description="weight γ of the R1 penalty (γ/2) |∇D(x)|² on real rows, added to the discriminator's loss "
        "(Mescheder et al. 2018: γ = 10 on images; 0 = off)",
    )
    levels: int | None = Field(
        None,
        ge=2,
        description="discrete data on K levels j / (K - 1) of [0, 1] (digits: 17, 8-bit images: 256): the "
        "discriminator sees real rows uniformly dequantised, (j + u) / K with u ~ U(0, 1), and samples are the "
        "generator's cells floor(K G(z)) / (K - 1), as the flow family's dequantisation; none = continuous data",
    )
    mmd_samples: int = Field(
        512, ge=2, description="held-out rows (and generated samples) in the MMD² the trainer logs as valid_loss"
    )


class GenerativeAdversarialNetwork(LatentVariableModel, LatentDecoder):
    r"""Generative adversarial network: ``x = G(z)``, ``z ~ N(0, I)``, trained against a discriminator.

    **Prior and likelihood.** :math:`z_n \sim \mathcal N(0, I_L)` (local site ``z``) and
    :math:`x_n = G_\theta(z_n)`, a point mass (site ``obs``, a ``Delta``): the generator is the
    decoder a VAE would have (``mlp`` or ``conv``, read through its mean). No global latents.

    **Marginal: avoided** (``likelihood = "none"``). :math:`p(x) = \int \delta(x - G_\theta(z))
    p(z)\, dz` has no density, so ``log_likelihood`` refuses with one line, and every
    log-likelihood output (``pplvm evaluate``, the arviz ``log_likelihood`` group) is left
    out. A discriminator :math:`D_\psi` instead tells data from samples, and the fit is judged
    by two-sample tests; the held-out loss the trainer logs is the MMD² between held-out rows
    and samples.

    **Latent structure.** Nothing to infer (``z`` is drawn inside the model, no encoder), so the
    guide is ``none``, and no ELBO can train it (there is no :math:`\log p(x \mid z)` to bound):
    only the adversarial objectives do — ``gan`` (non-saturating), ``gan_hinge`` and
    ``wgan_gp`` — with two optimisers and alternating steps. As a
    :class:`~pplvm.families.capabilities.LatentDecoder` it serves latent interpolation and traversal.

    **Card.** ``model.latent_dim`` and the generator's network (as a VAE's decoder), the
    discriminator's (``discriminator_hidden``, ``spectral_norm``), ``critic_steps``,
    ``gradient_penalty``, ``r1_penalty``, ``levels``, ``mmd_samples``. From
    ``models/gan_digits.toml``:

    .. code-block:: toml

        [model]
        family = "gan"
        latent_dim = 16
        hidden = [128, 128]          # the generator mirrors these (decoder), as a VAE's would
        likelihood = "bernoulli"     # generator outputs in (0, 1)
        discriminator_hidden = [256, 256]
        spectral_norm = true         # Miyato et al. 2018
        r1_penalty = 1.0             # (γ/2)|∇D(x)|² on real digits (Mescheder et al. 2018)

        [guide]
        kind = "none"

        [objective]
        name = "gan"                 # non-saturating; or "gan_hinge", "wgan_gp"
    """

    Config = GANConfig
    local_sites = ("z",)
    enumerated = False
    likelihood = "none"

    def __init__(self, config: GANConfig, dim: int):
        super().__init__(config, dim)
        self.side = SideInformation()
        self.decoder = make_decoder(config, dim)
        try:
            self.image_shape: tuple[int, int] | None = image_shape(config, dim)
        except CardError:
            if config.architecture == "conv" or config.image_shape is not None:
                raise
            self.image_shape = None
        if config.architecture == "conv":
            trunk = ConvTrunk(self.image_shape, config.channels, config.discriminator_activation)
            self.discriminator = nn.Sequential(
                trunk, mlp(trunk.out_features, config.discriminator_hidden[-1:], 1, config.discriminator_activation)
            )
        else:
            self.discriminator = mlp(dim, config.discriminator_hidden, 1, config.discriminator_activation)
        if config.spectral_norm:
            for layer in list(self.discriminator.modules()):
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(layer)
        self.register_buffer("_origin", torch.zeros(config.latent_dim))
        # a plain reference to the same module: called through it, the discriminator skips the
        # PyroModule attribute machinery (one param message per parameter per call)
        self._critic = (self.discriminator,)
        if config.encoder_target is not None:
            raise CardError("model.encoder_target: the gan family has no encoder (its generator is the decoder)")
        if isinstance(self.decoder, Decoder):
            self._network: tuple | None = (self.decoder.network,)
        else:  # the user's decoder (model.decoder_target), read through its mean
            self._network = None
            z = torch.zeros(1, config.latent_dim)
            weights, _ = user.latent_weights(self, lambda: self.decoder(z))
            if weights:
                raise CardError(
                    f"model.decoder_target: the gan family has no guide for latent decoder weights "
                    f"({', '.join(weights)}); give the generator PyroParam or plain weights"
                )

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ()

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    # ------------------------------------------------------------------ the model
    def prior(self, n: int) -> dist.Distribution:
        """``p(z) = Normal(0, I_L)``: batch ``(n,)``, event ``(L,)``."""
        loc = self._origin.expand(n, -1)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """``G_θ(z)``: ``(*S, B, L) -> (*S, B, D)``, the decoder's mean (its network through a
        plain reference, then the likelihood head; a user's decoder's mean)."""
        if self._network is None:
            return self.decoder(z).mean
        return self.decoder.likelihood(self._network[0](z)).mean

    def dequantize(self, x: torch.Tensor) -> torch.Tensor:
        """Real rows ``(B, D)`` as the discriminator compares them with ``G(z)``: with ``model.levels``
        = K, ``(j + u) / K`` for ``x = j / (K - 1)`` and ``u ~ U(0, 1)`` (the global torch RNG, which the
        trainer checkpoints); else ``x`` itself."""
        k = self.config.levels
        if k is None:
            return x
        return ((x * (k - 1)).round() + torch.rand_like(x)) / k

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        """Generator outputs ``(*S, B, D)`` in data units: with ``model.levels`` = K, the cell
        ``floor(K y) / (K - 1)`` (clamped to the K levels); else ``y`` itself."""
        k = self.config.levels
        if k is None:
            return y
        return (y * k).floor().clamp(0, k - 1) / (k - 1)

    def decode(self, z: torch.Tensor, side: torch.Tensor | None = None, params=None) -> dist.Distribution:
        """The point mass at ``G(z)`` (with ``model.levels``, its cell): batch ``(*S, B)``, event
        ``(D,)``; ``.mean`` is the point."""
        return dist.Delta(self.quantize(self.generator(z)), event_dim=1)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """Discriminator scores (logits) ``D_ψ(x)``: ``(B, D) -> (B,)``."""
        return self._critic[0](x).squeeze(-1)

    def forward(self, x=None, num_data=None):
        """``x``: ``(B, D)`` or None to generate ``num_data`` rows. With ``x`` the ``obs`` site is
        observed but has no density (a ``Delta``): the GAN is trained by its own update rule."""
        obs = values(x) if x is not None else None
        with self.data_plate(obs, num_data):
            z = pyro.sample("z", self.prior(len(obs) if obs is not None else num_data))
            return pyro.sample("obs", self.decode(z), obs=obs)

    def log_likelihood(self, x, params) -> torch.Tensor:
        raise IncompatibleError(
            "model.family = 'gan' has an implicit density (x = G(z) has no p(x)): it has no "
            "log-likelihood; compare samples with two-sample tests (pplvm two-sample)"
        )

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` new data ``(n, D)`` from prior draws made with ``generator``."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self.decode(torch.randn((n, self.latent_dim), generator=g).to(self._origin.device)).mean

    # ------------------------------------------------------------- the contract
    def init_values(self, x, generator):
        return {}

    def prepare(self, data, name="data"):
        x = as_matrix(values(data) if isinstance(data, Batch) else data, name, dim=self.dim)
        if self._network is not None and self.config.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{name}: the generator's outputs lie in [0, 1] (model.likelihood = 'bernoulli'), "
                f"but the data range over [{float(x.min()):.4g}, {float(x.max()):.4g}]; use "
                "model.likelihood = 'gaussian' or data scaled to [0, 1]"
            )
        k = self.config.levels
        if k is not None:
            off = ((x < 0) | (x > 1) | ((x * (k - 1) - (x * (k - 1)).round()).abs() > 1e-4)).any(-1).nonzero()
            if len(off):
                raise DataError(
                    f"{name}: model.levels = {k} needs values on the levels j/{k - 1} of [0, 1]; row "
                    f"{int(off[0, 0])} has others (check model.levels and set data.standardize = false)"
                )
        return x

    def check_data(self, x):
        if len(values(x)) < 2:
            raise DataError("data: a GAN's discriminator needs at least 2 training rows")

    def plots(self, x, params):
        if self.image_shape is None:
            return {}
        from ..evaluation.plots import image_grid

        return {"samples": image_grid(self.generate(64).cpu(), self.image_shape, title="generator samples")}
