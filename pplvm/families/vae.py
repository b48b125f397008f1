"""Variational autoencoders: a continuous latent per datum and a neural decoder.

Generative model (L latent dimensions, D observed, optional side information y_n)::

    z_n       ~ Normal(0, I_L)                                  n = 1..N
    x_n | z_n ~ p_θ(x_n | z_n [, y_n])      decoder network + likelihood head (pplvm.decoders)

with the amortized guide ``q_φ(z_n | x_n [, y_n]) = Normal(μ_φ, diag σ_φ²)`` (an encoder
network, :class:`pplvm.guides.amortized.AmortizedNormal`). θ and φ are point-estimated network
weights, so there are no global latent sites — unless the decoder is the user's own
(``model.decoder_target``, :mod:`pplvm.decoders.user`) with ``PyroSample`` weights: those are
then the family's global latents θ ~ p(θ), drawn once per call outside the data plate and
guided by a mean-field normal beside the encoder. ``log p(x_n) = log ∫ p(x_n | z) p(z) dz`` has no
closed form; :meth:`VAE.log_likelihood` estimates it by importance sampling.

``vae`` is the unconditional model (Kingma & Welling 2014; the IWAE paper's networks by
default); ``cvae`` (Sohn et al. 2015) feeds labels (one-hot) or covariates y to encoder and
decoder through ``Batch(x, y)`` and generates class by class.

Pyro sites: ``z`` (local, in the ``data`` plate, event dim 1) and ``obs`` (event dim 1), so
any estimator over a (model, guide) pair (IWAE, DReG, STL, importance-sampled
log-likelihood) applies as it would to any Pyro model.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, model_validator
from pyro import poutine

from ..data.base import Batch, as_matrix, values
from ..decoders import Decoder, NetworkConfig, image_shape, make_decoder, make_encoder, user
from ..decoders.side import SideEncoder, SideInformation
from ..errors import CardError, IncompatibleError
from .base import LIKELIHOOD_SAMPLES, ContinuousLatentModel, FamilyConfig, LatentDecoder, over_draws


class VAEConfig(FamilyConfig, NetworkConfig):
    family: Literal["vae"] = "vae"


class CVAEConfig(VAEConfig):
    family: Literal["cvae"] = "cvae"
    classes: int | None = Field(None, ge=2, description="y holds class labels 0..classes-1 (one-hot inputs)")
    side_dim: int | None = Field(None, ge=1, description="y holds covariates of this width instead")

    @model_validator(mode="after")
    def _one_kind_of_y(self):
        if (self.classes is None) == (self.side_dim is None):
            raise ValueError("set exactly one of model.classes (labels) or model.side_dim (covariates)")
        return self


def side_information(config: VAEConfig) -> SideInformation:
    """How ``y`` enters the networks of a ``cvae`` card (none for a ``vae``)."""
    if not isinstance(config, CVAEConfig):
        return SideInformation()
    if config.classes is not None:
        return SideInformation("labels", config.classes, "model.classes")
    return SideInformation("covariates", config.side_dim, "model.side_dim")


class _Autoencoder(ContinuousLatentModel, LatentDecoder):
    """The shared implementation of :class:`VAE` and :class:`ConditionalVAE` (which differ only
    in their side information). ``self.decoder`` holds θ; the encoder (φ) belongs to the guide."""

    local_sites = ("z",)
    likelihood = "estimate"

    def __init__(self, config: VAEConfig, dim: int, side: SideInformation):
        super().__init__(config, dim)
        self.side = side
        self.decoder = make_decoder(config, dim, side.size)
        #: global latent sites of a user's Bayesian decoder (name -> shape); the support of
        #: its distribution checks the data (a built-in decoder's likelihood head does otherwise)
        self.weights: dict[str, tuple[int, ...]] = {}
        self._support = None
        if not isinstance(self.decoder, Decoder):
            z = torch.zeros(1, config.latent_dim)
            probe_side = torch.zeros(1, side.size) if side.size else None
            self.weights, self._support = user.latent_weights(self, lambda: user.call(self.decoder, z, probe_side))
        try:
            self.image_shape: tuple[int, int] | None = image_shape(config, dim)
        except CardError:
            if config.architecture == "conv" or config.image_shape is not None:
                raise
            self.image_shape = None  # not an image: no image plots

    @property
    def global_sites(self) -> tuple[str, ...]:
        return tuple(self.weights)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    # ------------------------------------------------------------------ the model
    def prior(self, n: int) -> dist.Distribution:
        """``p(z_n) = Normal(0, I_L)``: batch ``(n,)``, event ``(L,)``."""
        zeros = torch.zeros(n, self.latent_dim, device=self.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def decode(
        self, z: torch.Tensor, side: torch.Tensor | None = None, params: dict[str, torch.Tensor] | None = None
    ) -> dist.Distribution:
        """``p_θ(x | z, y)``: ``z`` ``(*S, N, L)``, ``side`` features ``(N, C)``; batch ``(*S, N)``,
        event ``(D,)``. Its ``.mean`` is the decoded image. A Bayesian decoder's weights are
        those of the model call it runs in, else ``params`` (one value per global site, e.g.
        ``run.params()``)."""
        if not self.weights or self._pyro_context.active:
            return user.call(self.decoder, z, side)
        if params is None:
            raise IncompatibleError(
                f"the decoder's weights are latent ({', '.join(self.weights)}): "
                "pass params=run.params() (or posterior draws) to decode"
            )
        with poutine.condition(data=params), self._pyro_context:
            user.draw(self, self.global_sites)
            return user.call(self.decoder, z, side)

    def forward(self, x=None, num_data=None, *, y=None):
        """``x``: ``(B, D)`` (``Batch(x, y)`` for a conditional model) or None to generate
        ``num_data`` rows (given ``y``, else :meth:`SideInformation.default`)."""
        obs = values(x) if x is not None else None
        side = self.side(x) if x is not None else self.side.features(self.side.default(num_data) if y is None else y)
        side = side.to(self.device) if side is not None else None
        user.draw(self, self.global_sites)  # a Bayesian decoder's weights: once, outside the data plate
        with self.data_plate(obs, num_data):
            n = len(obs) if obs is not None else num_data
            z = pyro.sample("z", self.prior(n))
            return pyro.sample("obs", self.decode(z, side), obs=obs)

    def log_joint(self, data, z: torch.Tensor) -> torch.Tensor:
        """``log p(z_n) + log p_θ(x_n | z_n, y_n)`` for ``z`` ``(*S, N, L)``: ``(*S, N)``."""
        x = values(data)
        return self.prior(len(x)).log_prob(z) + self.decode(z, self.side(data)).log_prob(x)

    @torch.no_grad()
    def log_likelihood(
        self,
        x,
        params,
        *,
        proposal: Callable | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        max_elements: int = 2**24,
    ) -> torch.Tensor:
        """Importance-sampling estimate of ``log p(x_n)``, ``(N,)``::

            log (1/S) Σ_s p(x_n, z_s) / q(z_s | x_n),      z_s ~ q(· | x_n)

        an unbiased estimate of ``p(x_n)`` (so a stochastic lower bound in log space that
        tightens as S grows), by :func:`~pplvm.inference.importance.importance_log_likelihood`.
        ``proposal`` is a guide called as ``proposal(x)`` that samples ``z`` inside the data
        plate (the amortized guide); without one the prior is used, which is valid but loose.
        ``params`` is empty, or for a Bayesian decoder holds its weights, each ``(*S, *shape)``:
        the estimate is then ``(*S, N)``, one per draw. Memory is bounded by ``max_elements``."""
        from ..inference.importance import importance_log_likelihood

        guide = proposal if proposal is not None else self._prior_proposal
        if self.weights:  # the proposal's draws of the weights give way to the conditioned ones
            plate = self.plate_name
            guide = poutine.block(
                guide, hide_fn=lambda site: not any(f.name == plate for f in site["cond_indep_stack"])
            )

        def estimate(model) -> torch.Tensor:
            est = importance_log_likelihood(
                model, guide, x, k=num_samples or LIKELIHOOD_SAMPLES, seed=seed, max_elements=max_elements
            )
            return est.log_likelihood.to(values(x).dtype)

        return over_draws(params, self.weights, lambda p: estimate(self.conditioned(p) if p else self))

    def _prior_proposal(self, x, num_data=None) -> None:
        """A guide proposing ``z`` from the prior ``p(z)``."""
        with self.data_plate(values(x), num_data):
            pyro.sample("z", self.prior(len(x)))

    @torch.no_grad()
    def generate(
        self,
        n: int | None = None,
        *,
        y: Any = None,
        generator: torch.Generator | None = None,
        mean: bool = True,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``n`` new data ``(n, D)`` (or one per entry of ``y``): decoder means (``mean``) or draws
        (a Bayesian decoder's weights from ``params``, see :meth:`decode`)."""
        y = self.side.default(n) if y is None else self.side.check(y, len(y), "y")
        n = len(y) if y is not None else n
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        side = self.side.features(y)
        z = torch.randn((n, self.latent_dim), generator=g).to(self.device)
        p = self.decode(z, side.to(self.device) if side is not None else None, params)
        return (p.mean if mean else p.sample()).cpu()

    # ------------------------------------------------------------- the contract
    def make_encoder(self):
        return SideEncoder(make_encoder(self.config, self.dim, self.side.size), self.side)

    def init_values(self, x, generator):
        # the decoder starts at the mean image; a user's decoder (model.decoder_target) starts as
        # it was built, unless it defines start_at_mean(x) too
        start = getattr(self.decoder, "start_at_mean", None)
        if self.config.output_bias == "data_mean" and callable(start):
            start(values(x))
        return {}

    def _check_support(self, x: torch.Tensor, name: str) -> None:
        if self._support is not None:
            user.check_support(self._support, x, name)
        else:
            self.decoder.likelihood.check(x, name)

    def prepare(self, data, name="data"):
        if self.side.kind == "none":
            x = as_matrix(values(data) if isinstance(data, Batch) else data, name, dim=self.dim)
            self._check_support(x, name)
            return x
        batch = self.side.batch(data, self.dim, name, f"family {self.config.family!r}")
        self._check_support(batch.x, name)
        return batch

    def check_data(self, x):
        pass  # every non-empty batch of valid rows can train a VAE

    def plots(self, x, params):
        if self.image_shape is None:
            return {}
        from ..evaluation.plots import image_grid

        g = torch.Generator().manual_seed(0)
        if self.side.kind == "labels":
            per_class = 8
            y = torch.arange(self.side.size).repeat_interleave(per_class)
            images = self.generate(y=y, generator=g, params=params).reshape(self.side.size, per_class, -1)
            return {
                "samples": image_grid(
                    images,
                    self.image_shape,
                    title="decoder means by class",
                    row_labels=[str(k) for k in range(self.side.size)],
                )
            }
        if self.side.kind == "covariates":
            return {}
        return {
            "samples": image_grid(
                self.generate(64, generator=g, params=params), self.image_shape, title="decoder means of prior draws"
            )
        }


class VAE(_Autoencoder):
    r"""Variational autoencoder (Kingma & Welling 2014): a Gaussian latent per datum, a neural decoder.

    **Prior.** :math:`z_n \sim \mathcal N(0, I_L)`, one local latent ``z`` per datum; no global
    latents (see below).

    **Likelihood.** The decoder :math:`p_\theta(x_n \mid z_n)`: a network (``mlp`` or ``conv``,
    :mod:`pplvm.decoders`) and a likelihood head, Bernoulli (logits) or Gaussian (a fixed,
    learned or amortized scale). Its guide is the encoder's
    :math:`q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \mathrm{diag}\,\sigma_\phi(x_n)^2)`.

    **Marginal: estimated** (``likelihood = "estimate"``). :math:`p(x_n) = \int p_\theta(x_n \mid z)
    p(z)\, dz` has no closed form: training maximises a bound (the ELBO, IWAE ...) and
    ``log_likelihood`` returns the importance-sampled estimate with the run's guide as proposal
    and S = ``evaluation.samples`` draws per datum,

    .. math::

        \log \hat p(x_n) = \log \frac1S \sum_{s=1}^S \frac{p(z_s)\, p_\theta(x_n \mid z_s)}{q_\phi(z_s \mid x_n)},
        \qquad z_s \sim q_\phi(\cdot \mid x_n),

    unbiased for :math:`p(x_n)` (so in expectation a lower bound of :math:`\log p(x_n)`, the
    IWAE-S bound, tightening as S grows). Its delta-method standard error
    :math:`\sqrt{(r - 1)/(S - 1)}`, :math:`r = S \sum w_s^2 / (\sum w_s)^2`, and effective sample
    size :math:`S / r` are what :func:`pplvm.inference.importance.importance_log_likelihood`
    reports beside it; the family returns the estimate alone.

    **Latent structure.** One continuous, reparameterisable local site ``z`` ``(N, L)`` and an
    encoder (``make_encoder``), no closed-form posterior and no enumerated site: guides
    that serve a continuous local through an encoder (``amortized``, ``flow``) serve it, and
    every SVI objective over a sampled local (``elbo``, ``meanfield`` with analytic KLs and
    free bits, ``iwae``, ``iwae_dreg``, ``stl``, ``renyi``, KL warm-up). ``meanfield`` guides
    (free :math:`q(z_n)` per training row) do not, since it reads no row index. The decoder
    weights θ are point estimates, so there are no global latents, unless the decoder is your
    own (``model.decoder_target``) with ``PyroSample`` weights: those are then global latents
    with a mean-field guide (``guide.globals``) beside the encoder.

    **Card.** ``model.latent_dim``, ``architecture``, ``hidden``, ``activation``, ``likelihood``
    and the Gaussian scale, the networks' ``init`` and ``output_bias``. From
    ``models/vae_digits.toml``:

    .. code-block:: toml

        [model]
        family = "vae"
        latent_dim = 50
        architecture = "mlp"
        hidden = [200, 200]
        activation = "tanh"
        likelihood = "bernoulli"

        [guide]
        kind = "amortized"

        [objective]
        name = "meanfield"           # ELBO with the KL in closed form; or "elbo", "iwae", "renyi"
        kl_warmup_epochs = 10        # β: 0 -> 1 over the first 10 epochs
    """

    Config = VAEConfig

    def __init__(self, config: VAEConfig, dim: int):
        super().__init__(config, dim, SideInformation())


class ConditionalVAE(_Autoencoder):
    r"""Conditional VAE (Sohn et al. 2015): labels or covariates y feed encoder and decoder.

    **Prior.** :math:`z_n \sim \mathcal N(0, I_L)`, independent of :math:`y_n`; :math:`y_n` is
    given with each datum (``Batch(x, y)``, from the data source's labels): class labels
    ``0 .. classes - 1`` (entered one-hot) or covariates of ``side_dim`` columns.

    **Likelihood.** :math:`p_\theta(x_n \mid z_n, y_n)`, the decoder on :math:`[z_n, y_n]`; the
    guide :math:`q_\phi(z_n \mid x_n, y_n)` sees y too. New data are generated class by class
    (or beside given y).

    **Marginal: estimated** (``likelihood = "estimate"``). :math:`p(x_n) = \int p_\theta(x_n \mid z)
    p(z)\, dz` has no closed form: training maximises a bound (the ELBO, IWAE ...) and
    ``log_likelihood`` returns the importance-sampled estimate with the run's guide as proposal
    and S = ``evaluation.samples`` draws per datum,

    .. math::

        \log \hat p(x_n) = \log \frac1S \sum_{s=1}^S
        \frac{p(z_s)\, p_\theta(x_n \mid z_s, y_n)}{q_\phi(z_s \mid x_n, y_n)},
        \qquad z_s \sim q_\phi(\cdot \mid x_n, y_n),

    unbiased for :math:`p(x_n)`, with the standard error and effective sample size of
    :class:`VAE`'s estimate.

    **Latent structure.** As :class:`VAE`'s: one continuous local site ``z`` with an encoder, served
    by the same guides and objectives; ``y`` is an input of the encoder and the decoder, not a
    latent.

    **Card.** Those of ``vae`` and exactly one of ``model.classes`` or ``model.side_dim``. From
    ``models/cvae_digits.toml``:

    .. code-block:: toml

        [model]
        family = "cvae"
        classes = 10
        latent_dim = 8
        architecture = "conv"
        likelihood = "bernoulli"

        [guide]
        kind = "amortized"

        [objective]
        name = "iwae"                # IWAE bound, k = 5 (RenyiELBO with alpha = 0)
        num_particles = 5
    """

    Config = CVAEConfig
    uses_labels = True

    def __init__(self, config: CVAEConfig, dim: int):
        super().__init__(config, dim, side_information(config))
