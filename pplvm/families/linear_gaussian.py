"""Linear-Gaussian latent models: probabilistic PCA and factor analysis.

Generative model (L latent dimensions, D observed, L < D)::

    W         ~ Normal(0, s)^{D×L}        only with ``prior = "normal"`` (Bayesian W)
    z_n       ~ Normal(0, I_L)            n = 1..N
    x_n | z_n ~ Normal(W z_n + μ, Ψ)      Ψ = σ² I (``ppca``)  or  diag(ψ_1..ψ_D) (``fa``)

μ, Ψ (and W unless it has a prior) are maximum-likelihood parameters of the model
(``PyroParam``; scales are ``floor + softplus(raw)``). Integrating z out,

    x_n | θ ~ Normal(μ, W Wᵀ + Ψ)                              (the exact marginal)
    z_n | x_n, θ ~ Normal(C⁻¹ Wᵀ Ψ⁻¹ (x_n − μ), C⁻¹),  C = I_L + Wᵀ Ψ⁻¹ W

which for PPCA is Tipping & Bishop's ``N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹)``, ``M = WᵀW + σ²I``
(``C = M / σ²``). The exact posterior serves as the ``exact`` guide; with it the ELBO equals
``log p(x | θ)`` for every draw, so fitting by SVI is EM's gradient form and recovers the
top-L principal subspace (PPCA). ``ppca`` and ``fa`` are one class; they differ only in Ψ.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pydantic import Field
from pyro.nn import PyroParam

from ..data.base import as_matrix, values
from ..errors import CardError, DataError
from .base import ClosedFormEM, ContinuousLatentModel, ExactLocalPosterior, FamilyConfig, IdentifiedSummaries


class LinearGaussianConfig(FamilyConfig):
    latent_dim: int = Field(2, ge=1, description="latent dimension L (< data dimension D)")
    prior: Literal["none", "normal"] = Field(
        "none", description="'none': W is a maximum-likelihood parameter; 'normal': W ~ Normal(0, weight_scale)"
    )
    weight_scale: float = Field(1.0, gt=0, description="prior scale of the entries of W (prior = 'normal')")
    noise_init: float = Field(1.0, gt=0, description="initial noise scale (σ, or every ψ_d)")
    noise_floor: float = Field(1e-3, gt=0, description="smallest noise scale: scale = floor + softplus(raw)")
    encoder: Literal["linear", "mlp"] = Field("linear", description="amortized guide: encoder network")
    hidden: int = Field(32, ge=1, description="hidden width of the mlp encoder")
    init: Literal["pca", "random"] = Field(
        "pca",
        description="'pca': start μ, W, noise at the PCA solution of the training data; "
        "'random': μ = 0, small random W, noise = noise_init",
    )


class PPCAConfig(LinearGaussianConfig):
    family: Literal["ppca"] = "ppca"


class FAConfig(LinearGaussianConfig):
    family: Literal["fa"] = "fa"


class LinearGaussianParams(NamedTuple):
    """Point or batched parameters: weight ``(*S, D, L)``, loc ``(*S, D)``, noise ``(*S, D)``
    (standard deviations, the square roots of Ψ's diagonal)."""

    weight: torch.Tensor
    loc: torch.Tensor
    noise: torch.Tensor


class LinearGaussian(ContinuousLatentModel, ExactLocalPosterior, ClosedFormEM, IdentifiedSummaries):
    """Shared implementation of ``ppca`` and ``fa`` (subclasses set ``Config`` and ``noise``).

    Sites: global ``weight`` ``(D, L)`` when ``prior = "normal"``; local ``z`` ``(N, L)``;
    observed ``obs`` ``(N, D)``."""

    #: "isotropic" (one σ for every dimension) or "diagonal" (one ψ_d per dimension)
    noise: ClassVar[Literal["isotropic", "diagonal"]]
    local_sites = ("z",)
    indexed_rows = True
    likelihood = "exact"
    site_dims = {"weight": ["feature", "latent"]}

    def __init__(self, config: LinearGaussianConfig, dim: int):
        super().__init__(config, dim)
        if config.latent_dim >= dim:
            raise CardError(
                f"model.latent_dim = {config.latent_dim} must be smaller than the data dimension D = {dim}; "
                "a linear-Gaussian model with L >= D explains nothing (W Wᵀ can be any covariance)"
            )
        self.L = config.latent_dim
        self.loc = PyroParam(torch.zeros(dim))
        if config.prior == "none":
            # small random start (torch's global RNG, seeded by the caller: Run.from_card)
            self.weight = PyroParam(0.1 * torch.randn(dim, self.L))
        n_noise = 1 if self.noise == "isotropic" else dim
        raw = _softplus_inverse(torch.tensor(max(config.noise_init - config.noise_floor, 1e-6)))
        self.noise_raw = PyroParam(raw.expand(n_noise).clone())

    # ----------------------------------------------------------------- the contract
    @property
    def global_sites(self) -> tuple[str, ...]:
        return ("weight",) if self.config.prior == "normal" else ()

    @property
    def latent_dim(self) -> int:
        return self.L

    def noise_scale(self) -> torch.Tensor:
        """Observation noise standard deviations ``(D,)`` (floored softplus of ``noise_raw``)."""
        scale = self.config.noise_floor + F.softplus(self.noise_raw)
        return scale.expand(self.dim)

    def forward(self, x=None, num_data=None):
        c, D, L = self.config, self.dim, self.L
        if c.prior == "normal":
            weight = pyro.sample(
                "weight", dist.Normal(self.scalar(0.0), self.scalar(c.weight_scale)).expand([D, L]).to_event(2)
            )
        else:
            weight = self.weight
        noise = self.noise_scale()
        with self.data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(L, device=self.device), 1.0).to_event(1))
            mean = (weight @ z.unsqueeze(-1)).squeeze(-1) + self.loc  # (*P, B, D)
            return pyro.sample("obs", dist.Normal(mean, noise).to_event(1), obs=values(x) if x is not None else None)

    def parameters_at(self, params: dict[str, torch.Tensor]) -> LinearGaussianParams:
        """W, μ and the noise scales: ``params`` (global sites, and optionally ``loc`` /
        ``noise`` / ``weight`` to evaluate at given values) over the model's own parameters."""
        weight = params.get("weight", self.weight if self.config.prior == "none" else None)
        if weight is None:
            raise KeyError("params must hold 'weight' (a global latent of this Bayesian model)")
        loc = params.get("loc", self.loc)
        noise = params.get("noise", self.noise_scale())
        return LinearGaussianParams(weight, loc, noise.expand(*noise.shape[:-1], self.dim))

    def marginal(self, params: dict[str, torch.Tensor]) -> dist.LowRankMultivariateNormal:
        """``p(x | θ) = Normal(μ, W Wᵀ + Ψ)`` with batch shape ``(*S, 1)`` (``S`` from ``params``).

        Pyro's low-rank MVN inverts ``W Wᵀ + Ψ`` by Woodbury through the Cholesky factor of
        the capacitance ``I + Wᵀ Ψ⁻¹ W ⪰ I``, which is never singular; the noise floor keeps
        Ψ⁻¹ bounded, so no further jitter is needed."""
        w, loc, noise = self.parameters_at(params)
        return dist.LowRankMultivariateNormal(loc.unsqueeze(-2), w.unsqueeze(-3), noise.pow(2).unsqueeze(-2))

    def log_likelihood(self, x, params):
        return self.marginal(params).log_prob(x)

    def local_posterior(self, x, params):
        """Exact ``p(z_n | x_n, θ) = MultivariateNormal(C⁻¹ Wᵀ Ψ⁻¹ (x_n − μ), C⁻¹)``, event
        shape ``(L,)``; ``C = I + Wᵀ Ψ⁻¹ W`` (jittered). Batch dims of ``params`` broadcast
        against the data dim from the right, as inside Pyro's data plate: W ``(*S, 1, D, L)``
        gives batch shape ``(*S, N)``, a point W ``(D, L)`` gives ``(N,)``."""
        w, loc, noise = self.parameters_at(params)
        wt_psi = w.transpose(-1, -2) * noise.pow(-2).unsqueeze(-2)  # Wᵀ Ψ⁻¹, (*S, L, D)
        eye = torch.eye(self.L, dtype=w.dtype, device=w.device)
        gram = wt_psi @ w
        capacitance = eye * (1 + _jitter(w.dtype)) + 0.5 * (gram + gram.transpose(-1, -2))  # (*S, L, L)
        chol = torch.linalg.cholesky(capacitance)
        rhs = wt_psi @ (x - loc).unsqueeze(-1)  # (*S, N, L, 1)
        mean = torch.cholesky_solve(rhs, chol).squeeze(-1)  # (*S, N, L)
        return dist.MultivariateNormal(mean, precision_matrix=capacitance)

    def identified(self, params):
        """W is identified only up to a rotation (W R gives the same model); its row Gram
        ``diag(W Wᵀ)`` — the signal variance of each feature — is not: ``(*S, D)``."""
        return {"signal_variance": params["weight"].pow(2).sum(-1)}

    # ------------------------------------------------------------------ EM
    def em_estimates(self):
        return ("map", "ml")

    def expected_statistics(self, x, params):
        """The expected complete-data statistics Σ E[z_n], Σ (x_n − μ) E[z_n]ᵀ, Σ E[z_n z_nᵀ] are
        linear in the data's moments (E[z_n | x_n] = β (x_n − μ), β = C⁻¹ Wᵀ Ψ⁻¹), so the batch
        statistics are those moments: ``count``, ``first`` Σ x ``(D,)``, ``second`` Σ x xᵀ
        ``(D, D)``; :meth:`maximize` takes the posterior expectations from them."""
        x = values(x)
        return {
            "count": x.new_tensor(float(len(x))),
            "first": x.sum(0),
            "second": x.T @ x,
            "log_likelihood": self.log_likelihood(x, params).sum(),
        }

    def maximize(self, stats, params, estimate):
        """μ = x̄ (the exact maximiser of log p(x | θ) in μ for any W, Ψ), then with S the
        scatter about it and the E-step at (μ, W, Ψ) — β = C⁻¹ Wᵀ Ψ⁻¹, Σ (x − μ) E[z]ᵀ = S βᵀ,
        Σ E[z zᵀ] = N C⁻¹ + β S βᵀ — W = S βᵀ (Σ E[z zᵀ] + Ψ/s²)⁻¹ row by row (the ψ_d/s² term
        only with a normal prior on W under ``"map"``), then ψ_d = (S_dd − 2 w_d·b_d + w_dᵀ A w_d)
        / N given the new W (averaged over d for PPCA), floored at noise_floor²."""
        c, L = self.config, self.L
        w, _, noise = self.parameters_at(params)
        w, noise = w.detach(), noise.detach()
        n = stats["count"]
        loc = stats["first"] / n
        scatter = stats["second"] - n * torch.outer(loc, loc)
        psi = noise.pow(2)
        wt_psi = w.T / psi  # (L, D)
        eye = torch.eye(L, dtype=w.dtype, device=w.device)
        capacitance = eye + wt_psi @ w
        cov_z = torch.linalg.inv(capacitance)  # C⁻¹, (L, L)
        beta = cov_z @ wt_psi  # (L, D)
        cross = scatter @ beta.T  # Σ (x − μ) E[z]ᵀ, (D, L)
        second_z = n * cov_z + beta @ scatter @ beta.T  # Σ E[z zᵀ], (L, L)
        if c.prior == "normal" and estimate == "map":
            ridge = (psi / c.weight_scale**2)[:, None, None] * eye  # (D, L, L)
            new_w = torch.linalg.solve(second_z + ridge, cross.unsqueeze(-1)).squeeze(-1)
        else:
            new_w = torch.linalg.solve(second_z, cross.T).T
        resid = (scatter.diagonal() - 2 * (new_w * cross).sum(-1) + ((new_w @ second_z) * new_w).sum(-1)) / n
        if self.noise == "isotropic":
            resid = resid.mean().expand(self.dim)
        floor = c.noise_floor
        with torch.no_grad():
            self.loc_unconstrained.copy_(loc)
            scale = resid.clamp_min(0).sqrt()
            raw = _softplus_inverse((scale - floor).clamp_min(1e-6 * floor))
            self.noise_raw_unconstrained.copy_(raw[: self.noise_raw.numel()])
            if c.prior == "none":
                self.weight_unconstrained.copy_(new_w)
        return {"weight": new_w} if c.prior == "normal" else {}

    def make_encoder(self) -> torch.nn.Module:
        c = self.config
        return GaussianEncoder(self.dim, self.L, hidden=c.hidden if c.encoder == "mlp" else None)

    def init_values(self, x, generator):
        """With ``init = "pca"``, set μ, W (or the Bayesian W's starting value, returned) and
        the noise from the PCA of ``x``: Tipping & Bishop's ML solution, which for PPCA is the
        optimum and for FA a start (ψ_d: the residual variance of feature d). With
        ``init = "random"`` the constructor's values stay (and a Bayesian W starts at zero)."""
        if self.config.init == "random":
            return {}
        weight, noise_var = pca_solution(x, self.L)
        if self.noise == "diagonal":
            noise_var = (x.var(0, unbiased=False) - weight.pow(2).sum(-1)).clamp_min(noise_var * 1e-2)
        floor = self.config.noise_floor
        with torch.no_grad():
            self.loc_unconstrained.copy_(x.mean(0))
            self.noise_raw_unconstrained.copy_(
                _softplus_inverse((noise_var.sqrt() - floor).clamp_min(1e-6)).expand_as(self.noise_raw)
            )
            if self.config.prior == "none":
                self.weight_unconstrained.copy_(weight)
        return {"weight": weight} if self.config.prior == "normal" else {}

    def restart_refusal(self):
        if self.config.init != "pca":
            return None
        return (
            "model.init = 'pca' starts every restart at the same point (the PCA solution, for PPCA the optimum); "
            "use model.init = 'random' for restarts, or training.restarts = 1"
        )

    def prepare(self, data, name="data"):
        return as_matrix(data, name, dim=self.dim)

    def check_data(self, x):
        if len(x) <= self.L:
            raise DataError(
                f"data: {len(x)} row(s) but model.latent_dim = {self.L}; fitting L factors needs more rows than factors"
            )

    def plots(self, x, params):
        from ..evaluation.plots import latent_scatter_plot

        z = self.local_posterior(x, params).mean
        return {"latents": latent_scatter_plot(z, title=f"{self.config.family}, L={self.L}: posterior means")}


class PPCA(LinearGaussian):
    r"""Probabilistic PCA (Tipping & Bishop 1999): x = W z + μ + ε with isotropic noise σ² I.

    **Prior.** :math:`z_n \sim \mathcal N(0, I_L)`; with ``prior = "normal"`` also the global
    :math:`W \sim \mathcal N(0, s^2)^{D \times L}`, else W, μ and σ are maximum-likelihood
    parameters of the model (``PyroParam``).

    **Likelihood.** :math:`x_n \mid z_n \sim \mathcal N(W z_n + \mu,\ \Psi)`, :math:`\Psi = \sigma^2 I_D`.

    **Marginal: exact** (Gaussian closed form). ``log_likelihood`` returns
    :math:`\log \mathcal N(x_n;\ \mu,\ W W^\top + \Psi)`.

    **Latent structure.** One continuous local site ``z`` whose posterior has a closed form,
    :math:`p(z_n \mid x_n, \theta) = \mathcal N(C^{-1} W^\top \Psi^{-1} (x_n - \mu), C^{-1})`,
    :math:`C = I_L + W^\top \Psi^{-1} W` (:class:`~pplvm.families.capabilities.ExactLocalPosterior`), and
    closed-form EM (:class:`~pplvm.families.capabilities.ClosedFormEM`). So it admits the ``exact`` guide
    (with it the ELBO *equals* :math:`\log p(x \mid \theta)` for every draw: SVI is EM's gradient
    form), ``map``, an ``amortized`` encoder, per-datum ``meanfield`` normals, a ``flow`` (L ≥ 2),
    the SVI objectives over a reparameterised local (``elbo``, ``meanfield``, ``iwae``, ``iwae_dreg``,
    ``stl``, ``renyi``) and ``em``. Global latents: ``weight`` only with ``prior = "normal"`` (W is
    identified up to a rotation; its summaries are the signal variances :math:`\mathrm{diag}(W W^\top)`).

    **Card.** ``model.latent_dim`` (L < D), ``model.prior``, ``model.init`` (the PCA solution or
    random), the noise's start and floor, the encoder. From ``models/ppca_wine.toml``:

    .. code-block:: toml

        [model]
        family = "ppca"
        latent_dim = 3
        prior = "none"         # W, μ, σ are maximum-likelihood parameters

        [guide]
        kind = "exact"         # q(z | x) = p(z | x, θ): the ELBO is the exact log-likelihood

        [objective]
        name = "elbo"
    """

    Config = PPCAConfig
    noise = "isotropic"


class FactorAnalysis(LinearGaussian):
    r"""Factor analysis: x = W z + μ + ε with a noise variance ψ_d of its own per feature.

    **Prior.** :math:`z_n \sim \mathcal N(0, I_L)`; with ``prior = "normal"`` also the global
    :math:`W \sim \mathcal N(0, s^2)^{D \times L}`, else W, μ and ψ are maximum-likelihood
    parameters of the model (``PyroParam``).

    **Likelihood.** :math:`x_n \mid z_n \sim \mathcal N(W z_n + \mu,\ \Psi)`,
    :math:`\Psi = \mathrm{diag}(\psi_1, \dots, \psi_D)`.

    **Marginal: exact** (Gaussian closed form). ``log_likelihood`` returns
    :math:`\log \mathcal N(x_n;\ \mu,\ W W^\top + \Psi)`.

    **Latent structure.** As :class:`PPCA`'s, with the diagonal :math:`\Psi` in the same closed-form
    posterior :math:`p(z_n \mid x_n, \theta)`: the same guides and objectives, ``em`` included.

    **Card.** As ``ppca``'s. From ``models/fa_wine.toml``:

    .. code-block:: toml

        [model]
        family = "fa"
        latent_dim = 3
        prior = "none"
        encoder = "mlp"        # or "linear"

        [guide]
        kind = "amortized"     # or "exact" (the closed-form posterior)

        [objective]
        name = "elbo"
        num_particles = 4
    """

    Config = FAConfig
    noise = "diagonal"


class GaussianEncoder(torch.nn.Module):
    """``x (B, D) -> (loc (B, L), scale (B, L))``: one linear map, or a one-hidden-layer MLP
    (tanh) when ``hidden`` is given. Scales are ``floor + softplus``."""

    def __init__(self, dim: int, latent_dim: int, hidden: int | None = None, floor: float = 1e-3):
        super().__init__()
        out = 2 * latent_dim
        self.net = (
            torch.nn.Linear(dim, out)
            if hidden is None
            else torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out))
        )
        self.floor = floor

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, self.floor + F.softplus(raw)


def pca_solution(x: torch.Tensor, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tipping & Bishop's maximum-likelihood PPCA from the SVD of centred ``x`` ``(N, D)``:
    ``σ²`` = mean of the ``D − L`` smallest eigenvalues of the (1/N) covariance and
    ``W = U_L (Λ_L − σ² I)^{1/2}`` ``(D, L)``, up to a rotation."""
    xc = x - x.mean(0)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    eig = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    eig[: len(s)] = s.pow(2) / len(x)
    noise_var = eig[latent_dim:].mean().clamp_min(torch.finfo(x.dtype).tiny)
    return vt[:latent_dim].T * (eig[:latent_dim] - noise_var).clamp_min(0).sqrt(), noise_var


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _jitter(dtype: torch.dtype) -> float:
    """Diagonal jitter for the Cholesky of the capacitance (``⪰ I``, so tiny suffices)."""
    return 10 * torch.finfo(dtype).eps
