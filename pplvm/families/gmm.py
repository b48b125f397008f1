"""Bayesian Gaussian mixture with assignments summed out by enumeration.

Generative model (K components, D dimensions)::

    w         ~ Dirichlet(α 1_K)
    μ_k       ~ Normal(m, s)^D                                  k = 1..K
    σ_k       ~ LogNormal(a, b)^D                               per-dimension scales
    L_k       ~ LKJCholesky(D, η)                               full covariance only
    z_n | w   ~ Categorical(w)                                  enumerated, n = 1..N
    x_n | z_n ~ Normal(μ_z, σ_z)^D            (diag)
              | MultivariateNormal(μ_z, scale_tril = diag(σ_z) L_z)   (full)

so ``log p(x_n | θ) = logsumexp_k [log w_k + log N(x_n | μ_k, Σ_k)]`` exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field
from pyro.ops.indexing import Vindex

from ..data.base import as_matrix
from ..distributions import NormalFeatures
from ..errors import DataError, TrainingError
from ._em import dirichlet_mode, gaussian_diag_step
from ._starts import ClusterStartConfig, cluster_start, kmeans  # noqa: F401  (kmeans re-exported)
from .base import ClosedFormEM, IdentifiedSummaries, LatentVariableModel


class GMMConfig(ClusterStartConfig):
    family: Literal["gmm"] = "gmm"
    components: int = Field(3, ge=1, description="number of mixture components K")
    covariance: Literal["diag", "full"] = Field(
        "diag",
        description="each component's covariance: diag (a scale per feature) or full (scales and an LKJ correlation)",
    )
    weight_concentration: float = Field(1.0, gt=0, description="Dirichlet α of the weights")
    loc_mean: float = Field(0.0, description="prior mean of component means")
    loc_scale: float = Field(10.0, gt=0, description="prior scale of component means")
    scale_log_mean: float = Field(0.0, description="LogNormal prior of component scales: mean of log")
    scale_log_sd: float = Field(2.0, gt=0, description="LogNormal prior of component scales: sd of log")
    lkj_concentration: float = Field(1.0, gt=0, description="LKJ η of the correlations (full only)")
    reg_covar: float = Field(
        1e-6,
        ge=0,
        description="full covariance, EM: added to the diagonal of each component's covariance "
        "(scikit-learn's reg_covar), which keeps one that collapses onto a few rows positive definite",
    )


class GaussianMixture(LatentVariableModel, ClosedFormEM, IdentifiedSummaries):
    r"""Bayesian Gaussian mixture of K components, its assignments summed out exactly.

    **Prior.** Global latents θ = (``weights`` ``(K,)``, ``locs`` ``(K, D)``, ``scales``
    ``(K, D)``, and for ``covariance = "full"`` ``corr_chol`` ``(K, D, D)``); one discrete
    local ``assignment`` :math:`z_n` per datum:

    .. math::

        w \sim \mathrm{Dirichlet}(\alpha 1_K), \quad
        \mu_{k} \sim \mathcal N(m, s^2 I_D), \quad
        \sigma_{k} \sim \mathrm{LogNormal}(a, b)^D, \quad
        L_k \sim \mathrm{LKJCholesky}(D, \eta), \quad
        z_n \mid w \sim \mathrm{Categorical}(w).

    **Likelihood.** :math:`p(x_n \mid z_n = k, \theta) = \mathcal N(x_n; \mu_k, \Sigma_k)` with
    :math:`\Sigma_k = \mathrm{diag}(\sigma_k^2)` (diag) or
    :math:`\Sigma_k = S_k S_k^\top,\ S_k = \mathrm{diag}(\sigma_k) L_k` (full).

    **Marginal: exact** (enumeration). ``log_likelihood`` returns

    .. math::

        \log p(x_n \mid \theta) = \operatorname{logsumexp}_k \big[\log w_k + \log \mathcal N(x_n; \mu_k, \Sigma_k)\big],

    and :meth:`responsibilities` the posterior :math:`p(z_n = k \mid x_n, \theta)`.

    **Latent structure.** Global latents, and one enumerated local site (``enumerated``):
    objectives that sum discrete locals out serve it (``enum``, Pyro's ``TraceEnum_ELBO``),
    and it has closed-form E- and M-steps (:class:`~pplvm.families.capabilities.ClosedFormEM`; MAP and
    ML for ``diag``, ML only for ``full``), so ``em`` fits it too. Its guides are guides of the
    globals alone (``meanfield``, ``map``, ``lowrank``, ``flow``, Pyro's autoguides); pathwise
    estimators (``elbo``, ``iwae``, ``stl`` ...) are refused, since an enumerated site cannot be
    reparameterised. The component labels are exchangeable, so its identified summaries
    (:class:`~pplvm.families.capabilities.IdentifiedSummaries`) order the components by their first mean
    coordinate for calibration checks.

    **Card.** ``model.components`` (K), ``model.covariance``, the prior's hyperparameters and
    ``model.init`` (the k-means start). From ``models/gmm_iris.toml``:

    .. code-block:: toml

        [model]
        family = "gmm"
        components = 3
        covariance = "full"

        [guide]
        kind = "auto"          # meanfield here, map under objective.name = "em"

        [objective]
        name = "enum"          # the assignments are summed out exactly by TraceEnum_ELBO
    """

    Config = GMMConfig
    local_sites = ("assignment",)
    enumerated = True
    likelihood = "exact"
    site_dims = {
        "weights": ["component"],
        "locs": ["component", "feature"],
        "scales": ["component", "feature"],
        "corr_chol": ["component", "feature", "feature_"],
    }

    def __init__(self, config: GMMConfig, dim: int):
        super().__init__(config, dim)
        self.K = config.components

    @property
    def global_sites(self) -> tuple[str, ...]:
        full = ("corr_chol",) if self.config.covariance == "full" else ()
        return ("weights", "locs", "scales") + full

    def components(self, params: dict[str, torch.Tensor]) -> dist.Distribution:
        """Component densities with batch shape ``(*S, K)`` and event shape ``(D,)``."""
        locs, scales = params["locs"], params["scales"]
        if self.config.covariance == "diag":
            return dist.Normal(locs, scales).to_event(1)
        return dist.MultivariateNormal(locs, scale_tril=scales.unsqueeze(-1) * params["corr_chol"])

    def forward(self, x=None, num_data=None):
        c, K, D = self.config, self.K, self.dim
        weights = pyro.sample("weights", dist.Dirichlet(torch.full((K,), c.weight_concentration, device=self.device)))
        params = {"weights": weights}
        with pyro.plate("components", K, dim=-1, device=self.device):
            params["locs"] = pyro.sample(
                "locs", dist.Normal(self.scalar(c.loc_mean), self.scalar(c.loc_scale)).expand([D]).to_event(1)
            )
            params["scales"] = pyro.sample(
                "scales",
                dist.LogNormal(self.scalar(c.scale_log_mean), self.scalar(c.scale_log_sd)).expand([D]).to_event(1),
            )
            if c.covariance == "full":
                params["corr_chol"] = pyro.sample("corr_chol", dist.LKJCholesky(D, self.scalar(c.lkj_concentration)))
        with self.data_plate(x, num_data):
            z = pyro.sample("assignment", dist.Categorical(weights), infer={"enumerate": "parallel"})
            # The component dim (plate dim -1) is indexed by z; a singleton takes its place so
            # that any dims left of it (vectorised particles) line up with z's batch dims.
            picked = {k: Vindex(params[k].unsqueeze(-3))[..., z, :] for k in ("locs", "scales")}
            if "corr_chol" in params:
                picked["corr_chol"] = Vindex(params["corr_chol"].unsqueeze(-4))[..., z, :, :]
            return pyro.sample("obs", self.components(picked), obs=x)

    def log_likelihood(self, x, params):
        return self._joint(x, params).logsumexp(-1)

    def evaluation_cost(self, x):
        """Per (draw, datum): the ``(K, D)`` whitened residuals and ``(K, D, D)`` factors."""
        return self.K * self.dim * (self.dim + 2)

    def responsibilities(self, x, params) -> torch.Tensor:
        """Closed-form ``p(z_n = k | x_n, θ)``, ``(*S, N, K)``."""
        joint = self._joint(x, params)
        return (joint - joint.logsumexp(-1, keepdim=True)).exp()

    @torch.no_grad()
    def local_marginals(self, x, params):
        """The responsibilities in closed form (what enumeration gives; it gives nothing for
        K = 1, where Pyro does not enumerate a one-state site)."""
        return {"assignment": self.responsibilities(x, params)}

    @torch.no_grad()
    def map_locals(self, x, params):
        """Each row's most probable component (the assignments are independent given θ)."""
        return {"assignment": self._joint(x, params).argmax(-1)}

    def _joint(self, x, params) -> torch.Tensor:
        """``log w_k + log N(x_n | μ_k, Σ_k)``, ``(*S, N, K)``.

        The quadratic forms of all K components are one matrix product: with the Cholesky
        factor ``S_k = diag(σ_k) L_k`` of Σ_k, ``y_nk = S_k⁻¹ x_n − S_k⁻¹ μ_k`` for all k at
        once is ``x`` ``(N, D)`` times the stacked ``S_k⁻ᵀ`` ``(D, K·D)`` (as scikit-learn does
        with precision Cholesky factors); diagonal covariances expand the square instead,
        ``x² · σ⁻² − 2 x · μσ⁻² + μ² · σ⁻²``, one product of ``(x², x)`` ``(N, 2D)`` with ``(2D, K)``."""
        log_w = params["weights"].clamp_min(torch.finfo(x.dtype).tiny).log().unsqueeze(-2)  # (*S, 1, K)
        locs, scales = params["locs"], params["scales"]  # (*S, K, D)
        K, D = locs.shape[-2:]
        if self.config.covariance == "diag":  # one GEMM over (x², x) (NormalFeatures)
            normal = dist.Normal(locs.unsqueeze(-3), scales.unsqueeze(-3))  # (*S, 1, K, D)
            return log_w + NormalFeatures(normal, 1).log_prob(x.unsqueeze(-2))
        factor = scales.unsqueeze(-1) * params["corr_chol"]  # (*S, K, D, D)
        eye = torch.eye(D, dtype=factor.dtype, device=factor.device).expand_as(factor)
        inverse = torch.linalg.solve_triangular(factor, eye, upper=False)  # S_k⁻¹
        stacked = inverse.transpose(-1, -2).transpose(-3, -2).reshape(*factor.shape[:-3], D, K * D)
        y = (x @ stacked).unflatten(-1, (K, D)) - (inverse @ locs.unsqueeze(-1)).squeeze(-1).unsqueeze(-3)
        log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_density = -0.5 * y.pow(2).sum(-1) - log_det.unsqueeze(-2) - 0.5 * D * math.log(2 * math.pi)
        return log_w + log_density

    # ------------------------------------------------------------------ EM
    def em_estimates(self):
        """Full covariance has no closed-form MAP under the LogNormal scales and LKJ correlations
        (their mode given the scatter is not a formula), so only ``"ml"``; diagonal has both."""
        return ("map", "ml") if self.config.covariance == "diag" else ("ml",)

    batched_restarts = True

    def expected_statistics(self, x, params):
        """Responsibilities ``r`` ``(*R, N, K)`` by enumeration; ``count`` Σ r ``(*R, K)``,
        ``first`` Σ r x ``(*R, K, D)``, ``second`` Σ r x² ``(*R, K, D)`` (diag) or Σ r x xᵀ
        ``(*R, K, D, D)`` (full); ``R``: restarts, when the globals lead with that dim."""
        joint = self._joint(x, params)
        log_lik = joint.logsumexp(-1)
        r = (joint - log_lik.unsqueeze(-1)).exp()
        if self.config.covariance == "diag":
            rt = r.transpose(-1, -2)
            return {"count": r.sum(-2), "first": rt @ x, "second": rt @ x.pow(2), "log_likelihood": log_lik.sum(-1)}
        # full: in float64, where the M-step's Σ r x xᵀ / n − μ μᵀ cancels (float32 loses a
        # component's covariance in rounding as soon as its spread is ~1e-3 of its mean's size)
        r, x = r.double(), x.double()
        second = torch.einsum("...nk,ni,nj->...kij", r, x, x)
        first = r.transpose(-1, -2) @ x
        return {"count": r.sum(-2), "first": first, "second": second, "log_likelihood": log_lik.sum(-1)}

    def maximize(self, stats, params, estimate):
        c = self.config
        new = {"weights": dirichlet_mode(stats["count"], c.weight_concentration, estimate, params["weights"])}
        if c.covariance == "diag":
            new["locs"], new["scales"] = gaussian_diag_step(
                stats["count"],
                stats["first"],
                stats["second"],
                params["locs"],
                params["scales"],
                estimate,
                loc_mean=c.loc_mean,
                loc_scale=c.loc_scale,
                scale_log_mean=c.scale_log_mean,
                scale_log_sd=c.scale_log_sd,
            )
            return new
        # full covariance, maximum likelihood: Σ_k = Σ r x xᵀ / n_k − μ_k μ_kᵀ + reg_covar I, as
        # scale and correlation Cholesky factor (rounding-level jitter keeps the factor defined
        # when reg_covar = 0 and the data span every direction)
        n = stats["count"]  # (*R, K)
        has = n > 1e-10 * n.sum(-1, keepdim=True)
        safe = n.clamp_min(torch.finfo(n.dtype).tiny)
        locs = stats["first"] / safe[..., None]
        cov = stats["second"] / safe[..., None, None] - locs.unsqueeze(-1) * locs.unsqueeze(-2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        eye = torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        cov = cov + 10 * torch.finfo(cov.dtype).eps * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
        cov = cov + c.reg_covar * eye
        scales = cov.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(cov.dtype).tiny).sqrt()
        chol, info = torch.linalg.cholesky_ex(cov / (scales.unsqueeze(-1) * scales.unsqueeze(-2)))
        # singular also where the factor exists only by the jitter: in the parameters' dtype a
        # diagonal below √eps makes a partial correlation round to ±1 (the guide's transform: inf)
        tiny = torch.finfo(params["locs"].dtype).eps ** 0.5
        bad = ((info > 0) | (chol.diagonal(dim1=-2, dim2=-1).amin(-1) < tiny)) & has
        if bad.any():
            where = tuple(bad.nonzero()[0])  # (restart, component) under restarts
            k = int(where[-1])
            raise TrainingError(
                f"model.reg_covar = {c.reg_covar:g}: component {k}'s covariance is singular (it holds "
                f"{float(n[where]):.3g} rows' weight in {self.dim} dimensions); raise model.reg_covar (1e-6 "
                "is scikit-learn's) or lower model.components"
            )
        chol = chol / chol.norm(dim=-1, keepdim=True)
        dtype = params["locs"].dtype
        new["weights"] = new["weights"].to(dtype)
        new["locs"] = torch.where(has[..., None], locs.to(dtype), params["locs"])
        new["scales"] = torch.where(has[..., None], scales.to(dtype), params["scales"])
        new["corr_chol"] = torch.where(has[..., None, None], chol.to(dtype), params["corr_chol"])
        return new

    def identified(self, params):
        """The prior is exchangeable over component labels, so the posterior is too (label
        switching); ordering components by their first mean coordinate identifies them:
        ``locs`` ``(*S, K·D)``, ``weights`` ``(*S, K)``, ``scales`` ``(*S, K·D)`` in that order."""
        order = params["locs"][..., 0].argsort(-1)  # (*S, K)
        by_row = order.unsqueeze(-1).expand(params["locs"].shape)
        return {
            "locs": params["locs"].gather(-2, by_row).flatten(-2),
            "weights": params["weights"].gather(-1, order),
            "scales": params["scales"].gather(-2, by_row).flatten(-2),
        }

    def prepare(self, data, name="data"):
        return as_matrix(data, name, dim=self.dim)

    def check_data(self, x):
        if len(x) < self.K:
            raise DataError(
                f"data: {len(x)} rows but model.components = {self.K}; a mixture needs at least "
                "as many rows as components"
            )

    def init_values(self, x, generator):
        c, K, D = self.config, self.K, self.dim
        locs, labels = cluster_start(x, K, generator, c.init)
        # One M-step from the hard k-means assignments (as scikit-learn initialises EM).
        counts = torch.bincount(labels, minlength=K).to(x.dtype)
        weights = (counts + 1.0) / (counts.sum() + K)
        onehot = torch.nn.functional.one_hot(labels, K).to(x.dtype)  # (N, K)
        locs = (onehot.T @ x) / counts.clamp_min(1).unsqueeze(-1)
        centred = x.unsqueeze(1) - locs  # (N, K, D)
        cov = torch.einsum("nk,nki,nkj->kij", onehot, centred, centred) / counts.clamp_min(1)[:, None, None]
        spread = x.var(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(D, device=x.device)
        cov = torch.where((counts > D)[:, None, None], cov, torch.diag(spread)) + 1e-6 * torch.eye(D, device=x.device)
        scales = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        values = {"weights": weights, "locs": locs, "scales": scales}
        if c.covariance == "full":
            corr = cov / (scales.unsqueeze(-1) * scales.unsqueeze(-2))
            values["corr_chol"] = torch.linalg.cholesky(corr + 1e-6 * torch.eye(D, device=x.device))
            values["corr_chol"] = values["corr_chol"] / values["corr_chol"].norm(dim=-1, keepdim=True)
        return values

    def plots(self, x, params):
        from ..evaluation.plots import cluster_plot

        labels = self.responsibilities(x, params).argmax(-1)
        return {"clusters": cluster_plot(x, labels, params["locs"], title=f"GMM, K={self.K}")}
