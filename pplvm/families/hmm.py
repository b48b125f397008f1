"""Bayesian hidden Markov model; the state chain is summed out by a parallel forward algorithm.

Generative model (K states; sequences n = 1..N of length L_n; D features per step)::

    π                    ~ Dirichlet(α₀ 1_K)                     initial-state distribution
    A_k                  ~ Dirichlet(α 1_K + κ e_k)               transition row k (κ: stickiness)
    emission parameters φ_k, k = 1..K, one of
      gaussian      μ_k ~ Normal(m, s)^D,   σ_k ~ LogNormal(a, b)^D
      categorical   p_kd ~ Dirichlet(β 1_C),  d = 1..D            (C symbols 0..C-1 per feature)
      bernoulli     p_kd ~ Beta(β, β),        d = 1..D            (e.g. 88 piano keys per step)
    z_{n,0}              ~ Categorical(π)
    z_{n,t} | z_{n,t-1}  ~ Categorical(A_{z_{n,t-1}})             t = 1..L_n - 1
    x_{n,t} | z_{n,t}    ~ Π_d p(x_{n,t,d} | φ_{z_{n,t}, d})

The states are summed out exactly inside the observed site's distribution,
:class:`pplvm.distributions.HiddenMarkovChain`: ``log p(x_n | θ)`` is a log-space matrix
product over time evaluated as a parallel tree (no loop over t), with padding masked, so
TraceEnum_ELBO (objective ``enum``) fits the globals θ = (π, A, φ) on the exact marginal
likelihood. The same distribution gives the posterior state marginals (forward–backward) and
the Viterbi path, which :meth:`local_marginals` and :meth:`map_locals` return as ``states``.

Data are :class:`pplvm.data.Batch` of padded sequences: ``x`` ``(N, T, D)``, ``lengths`` ``(N,)``.
"""

from __future__ import annotations

from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field, model_validator

from ..data.base import Batch
from ..data.sequences import as_sequences, step_mask
from ..distributions import BernoulliFeatures, HiddenMarkovChain, NormalFeatures
from ..errors import DataError
from ._em import dirichlet_mode, gaussian_diag_step
from ._starts import ClusterStartConfig, cluster_start
from .base import ClosedFormEM, LatentVariableModel


class HMMConfig(ClusterStartConfig):
    family: Literal["hmm"] = "hmm"
    states: int = Field(3, ge=1, description="number of hidden states K")
    emission: Literal["gaussian", "categorical", "bernoulli"] = Field(
        "gaussian", description="what each state emits per feature: a normal, a categorical (categories) or a bernoulli"
    )
    categories: int | None = Field(None, ge=2, description="categorical only: symbols per feature C (values 0..C-1)")
    initial_concentration: float = Field(1.0, gt=0, description="Dirichlet α₀ of the initial distribution")
    transition_concentration: float = Field(1.0, gt=0, description="Dirichlet α of each transition row")
    stickiness: float = Field(0.0, ge=0, description="extra Dirichlet mass κ on staying in the same state")
    loc_mean: float = Field(0.0, description="gaussian: prior mean of state means")
    loc_scale: float = Field(10.0, gt=0, description="gaussian: prior scale of state means")
    scale_log_mean: float = Field(0.0, description="gaussian: LogNormal prior of state scales, mean of log")
    scale_log_sd: float = Field(2.0, gt=0, description="gaussian: LogNormal prior of state scales, sd of log")
    emission_concentration: float = Field(1.0, gt=0, description="categorical Dirichlet β / bernoulli Beta(β, β)")
    sample_length: int = Field(100, ge=1, description="length T of the sequences sample() draws")

    @model_validator(mode="after")
    def _categories_iff_categorical(self) -> "HMMConfig":
        if (self.emission == "categorical") != (self.categories is not None):
            raise ValueError("model.categories must be set exactly when model.emission = 'categorical'")
        return self


_EMISSION_SITES = {"gaussian": ("locs", "scales"), "categorical": ("emission_probs",), "bernoulli": ("emission_probs",)}


class HiddenMarkovModel(LatentVariableModel, ClosedFormEM):
    r"""Bayesian hidden Markov model over sequences, its state chain summed out exactly.

    **Prior.** Global latents θ: ``initial`` π ``(K,)``, ``transition`` A ``(K, K)`` and the
    emission parameters φ (``locs``, ``scales`` ``(K, D)`` for ``gaussian``; ``emission_probs``
    ``(K, D, C)`` for ``categorical``, ``(K, D)`` for ``bernoulli``). The local latent is the
    state path ``states`` :math:`z_{n,0..L_n-1}` of each sequence:

    .. math::

        \pi \sim \mathrm{Dirichlet}(\alpha_0 1_K), \quad
        A_k \sim \mathrm{Dirichlet}(\alpha 1_K + \kappa e_k), \quad
        z_{n,0} \sim \mathrm{Categorical}(\pi), \quad
        z_{n,t} \mid z_{n,t-1} \sim \mathrm{Categorical}(A_{z_{n,t-1}}).

    **Likelihood.** :math:`p(x_{n,t} \mid z_{n,t} = k, \phi) = \prod_d p(x_{n,t,d} \mid \phi_{k,d})`
    (Normal, Categorical or Bernoulli per feature; see the module).

    **Marginal: exact** (the forward algorithm). The chain is summed out inside the observed
    site's distribution (:class:`~pplvm.distributions.HiddenMarkovChain`, a log-space matrix
    product over time evaluated as a parallel tree, padding masked), so ``log_likelihood``
    returns

    .. math::

        \log p(x_n \mid \theta) = \log \sum_{z_{n,0:L_n-1}} \pi_{z_0} p(x_{n,0} \mid z_0)
        \prod_{t \ge 1} A_{z_{t-1} z_t}\, p(x_{n,t} \mid z_t),

    and the same distribution gives the state marginals (forward–backward) and the Viterbi
    path (``local_marginals``, ``map_locals``).

    **Latent structure.** Global latents and one enumerated local site, ``collapsed`` into
    ``obs``: it is served as :class:`~pplvm.families.gmm.GaussianMixture` is — objectives that
    sum discrete locals out (``enum``) or exact EM (``em``, Baum–Welch: MAP or ML M-steps), with a
    guide of the globals alone (``map``, ``meanfield``, ``lowrank``, ``flow``, autoguides).
    A datum is a sequence (``sequential``): data are a :class:`~pplvm.data.Batch` of padded
    ``(N, T, D)`` with ``lengths``.

    **Card.** ``model.states`` (K), ``model.emission`` (and ``categories``), the Dirichlet
    concentrations and ``stickiness`` κ, ``model.init``. From ``models/hmm_synthetic.toml``:

    .. code-block:: toml

        [model]
        family = "hmm"
        states = 3
        emission = "gaussian"

        [guide]
        kind = "map"           # or "meanfield", "lowrank"

        [objective]
        name = "enum"          # the state chain is summed out exactly
    """

    Config = HMMConfig
    local_sites = ("states",)
    enumerated = True
    collapsed = True
    sequential = True
    likelihood = "exact"
    site_dims = {
        "initial": ["state"],
        "transition": ["state", "next_state"],
        "locs": ["state", "feature"],
        "scales": ["state", "feature"],
        "emission_probs": ["state", "feature"],
    }

    def __init__(self, config: HMMConfig, dim: int):
        super().__init__(config, dim)
        self.K = config.states

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ("initial", "transition") + _EMISSION_SITES[self.config.emission]

    # ------------------------------------------------------------------ the model
    def forward(self, x: Batch | None = None, num_data: int | None = None) -> torch.Tensor:
        """``x``: a Batch of B padded sequences (or None: generate ``num_data`` sequences of
        ``sample_length`` steps). Returns the observations ``(B, T, D)``."""
        c, K = self.config, self.K
        params = {
            "initial": pyro.sample(
                "initial", dist.Dirichlet(torch.full((K,), c.initial_concentration, device=self.device))
            )
        }
        with pyro.plate("per_state", K, dim=-1, device=self.device):
            rows = c.transition_concentration + c.stickiness * torch.eye(K, device=self.device)
            params["transition"] = pyro.sample("transition", dist.Dirichlet(rows))
            params.update(self._sample_emission_params())
        values, lengths = _unpack(x)
        duration = c.sample_length if values is None else values.shape[-2]
        with self.data_plate(x, num_data):
            return pyro.sample("obs", self.chain(params, lengths, duration), obs=values)

    def _sample_emission_params(self) -> dict[str, torch.Tensor]:
        """Emission parameters φ_k, inside the ``per_state`` plate."""
        c, D = self.config, self.dim
        if c.emission == "gaussian":
            return {
                "locs": pyro.sample(
                    "locs", dist.Normal(self.scalar(c.loc_mean), self.scalar(c.loc_scale)).expand([D]).to_event(1)
                ),
                "scales": pyro.sample(
                    "scales",
                    dist.LogNormal(self.scalar(c.scale_log_mean), self.scalar(c.scale_log_sd)).expand([D]).to_event(1),
                ),
            }
        if c.emission == "categorical":
            prior = dist.Dirichlet(torch.full((c.categories,), c.emission_concentration, device=self.device))
        else:
            prior = dist.Beta(self.scalar(c.emission_concentration), self.scalar(c.emission_concentration))
        return {"emission_probs": pyro.sample("emission_probs", prior.expand([D]).to_event(1))}

    def emission(self, params: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        """``p(x_t | z_t = k)`` with batch ``(*S, K)`` (the shape of the parameters' leading
        dims) and event ``(D,)``."""
        if self.config.emission == "gaussian":
            return NormalFeatures(dist.Normal(params["locs"], params["scales"]), 1)  # log_prob: one GEMM over 2D
        if self.config.emission == "categorical":
            return dist.Categorical(probs=params["emission_probs"]).to_event(1)
        return BernoulliFeatures(dist.Bernoulli(probs=params["emission_probs"]), 1)  # log_prob: one GEMM over D

    def chain(self, params: dict[str, torch.Tensor], lengths: torch.Tensor | None, duration: int) -> HiddenMarkovChain:
        """The collapsed chain for globals with leading dims ``S`` (those of ``transition``,
        ``(*S, K, K)``) and sequences ``(N,)``: batch shape ``(*S, N)``, event ``(T, D)``.
        The emission gets batch ``(*S, 1, 1, K)``: slots for the sequence and the step."""
        S = params["transition"].shape[:-2]
        tiny = torch.finfo(params["transition"].dtype).tiny
        initial = params["initial"].reshape(S + (1, self.K))  # (*S, 1, K), aligned with the data dim
        transition = params["transition"].unsqueeze(-3)  # (*S, 1, K, K)
        emission = self.emission(
            {
                k: params[k].reshape(S + (1, 1) + params[k].shape[len(S) :])
                for k in _EMISSION_SITES[self.config.emission]
            }
        )
        return HiddenMarkovChain(
            initial.clamp_min(tiny).log(),
            transition.clamp_min(tiny).log(),
            emission,
            duration,
            lengths,
            latent="states",
        )

    def log_likelihood(self, x, params):
        """``log p(x_n | θ)`` of each sequence, ``(*S, N)``, states summed out exactly."""
        values, lengths = _unpack(x)
        return self.chain(params, lengths, values.shape[-2]).log_prob(values)

    def evaluation_cost(self, x):
        """Per (draw, sequence): the forward pass's ``(T, K, K)`` step factors and the
        ``(T, K, D)`` per-feature emission terms (Bernoulli/categorical/Gaussian log-probs)."""
        values_, _ = _unpack(x)
        return int(values_.shape[-2]) * self.K * (self.K + self.dim)

    # ------------------------------------------------------------------ EM (Baum–Welch)
    batched_restarts = True

    def em_estimates(self):
        return ("map", "ml")

    def expected_statistics(self, x, params):
        """Forward–backward (:meth:`HiddenMarkovChain.posterior`): ``initial`` Σ_n p(z_0)
        ``(K,)``, ``transitions`` Σ_n Σ_t p(z_{t-1}, z_t) ``(K, K)``, ``count`` Σ γ ``(K,)``,
        and per emission Σ γ x and Σ γ x² ``(K, D)`` (gaussian), Σ γ onehot(x) ``(K, D, C)``
        (categorical) or Σ γ x ``(K, D)`` (bernoulli); each with a leading restart dim ``R`` where
        the globals have one."""
        values, lengths = _unpack(x)
        post = self.chain(params, lengths, values.shape[-2]).posterior(values)
        gamma = post["states"]  # (*R, N, T, K)
        stats = {
            "initial": post["initial"].sum(-2),
            "transitions": post["transitions"].sum(-3),
            "count": gamma.sum((-3, -2)),
            "log_likelihood": post["log_prob"].sum(-1),
        }
        if self.config.emission == "categorical":
            onehot = torch.nn.functional.one_hot(values.long(), self.config.categories).to(gamma.dtype)
            stats["symbols"] = torch.einsum("...ntk,ntdc->...kdc", gamma, onehot)
        else:
            stats["first"] = torch.einsum("...ntk,ntd->...kd", gamma, values)
            if self.config.emission == "gaussian":
                stats["second"] = torch.einsum("...ntk,ntd->...kd", gamma, values.pow(2))
        return stats

    def maximize(self, stats, params, estimate):
        c, K = self.config, self.K
        counts = stats["transitions"]
        rows = c.transition_concentration + c.stickiness * torch.eye(K, dtype=counts.dtype, device=counts.device)
        new = {
            "initial": dirichlet_mode(stats["initial"], c.initial_concentration, estimate, params["initial"]),
            "transition": dirichlet_mode(stats["transitions"], rows, estimate, params["transition"]),
        }
        if c.emission == "gaussian":
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
        elif c.emission == "categorical":
            new["emission_probs"] = dirichlet_mode(
                stats["symbols"], c.emission_concentration, estimate, params["emission_probs"]
            )
        else:  # Beta(β, β) mode of each p_kd: (Σ γ x + β − 1) / (Σ γ + 2β − 2), clipped into (0, 1)
            beta = c.emission_concentration if estimate == "map" else 1.0
            ones = (stats["first"] + beta - 1).clamp_min(0)
            total = ones + (stats["count"].unsqueeze(-1) - stats["first"] + beta - 1).clamp_min(0)
            eps = torch.finfo(total.dtype).eps
            probs = torch.where(total > 0, ones / total.clamp_min(eps), params["emission_probs"])
            new["emission_probs"] = probs.clamp(eps, 1 - eps)
        return new

    # ------------------------------------------------------------------ data
    def prepare(self, data, name="data"):
        batch = as_sequences(data, name, dim=self.dim)
        c = self.config
        observed = batch.x[step_mask(batch)]  # (M, D)
        if c.emission == "categorical":
            bad = (observed != observed.round()) | (observed < 0) | (observed >= c.categories)
            what = f"integer symbols 0..{c.categories - 1} (model.categories = {c.categories})"
        elif c.emission == "bernoulli":
            bad = (observed != 0) & (observed != 1)
            what = "0/1 values (model.emission = 'bernoulli')"
        else:
            return batch
        if bad.any():
            seq, step, col = _locate(batch, bad)
            value = batch.x[seq, step, col].item()
            hint = "; data.standardize must be false for discrete emissions" if value != round(value) else ""
            raise DataError(
                f"{name}: value {value:g} at sequence {seq}, step {step}, feature {col} is not among the {what}{hint}"
            )
        return batch

    def check_data(self, x):
        steps = int(x.lengths.sum())
        if steps < self.K:
            raise DataError(
                f"data: {steps} observed steps but model.states = {self.K}; an HMM needs at least "
                "as many observed steps as states"
            )

    def init_values(self, x, generator):
        """A clustering of the observed steps (``model.init``) gives each step a state; the
        emission parameters, initial and transition probabilities are their smoothed counts."""
        c, K = self.config, self.K
        mask = step_mask(x)
        steps = x.x[mask]  # (M, D)
        features = self._features(steps)
        centres, labels = cluster_start(features, K, generator, c.init)
        state = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        state[mask] = labels
        follows = mask[:, 1:]
        pairs = state[:, :-1][follows] * K + state[:, 1:][follows]
        transition = torch.bincount(pairs, minlength=K * K).reshape(K, K).to(steps.dtype) + 1.0
        initial = torch.bincount(state[:, 0], minlength=K).to(steps.dtype) + 1.0
        values = {"initial": initial / initial.sum(), "transition": transition / transition.sum(-1, keepdim=True)}
        onehot = torch.nn.functional.one_hot(labels, K).to(steps.dtype)  # (M, K)
        counts = onehot.sum(0)  # (K,)
        if c.emission == "gaussian":
            spread = steps.std(0).clamp_min(1e-3) if len(steps) > 1 else torch.ones(self.dim, device=steps.device)
            n = counts.clamp_min(1)[:, None]
            locs = torch.where(counts[:, None] > 0, onehot.T @ steps / n, centres)
            var = onehot.T @ steps.pow(2) / n - locs.pow(2)
            scales = torch.where(counts[:, None] > 1, var.clamp_min(0).sqrt(), spread).clamp_min(1e-3)
            values.update(locs=locs, scales=scales)
        elif c.emission == "categorical":
            per_symbol = (onehot.T @ features).reshape(K, self.dim, c.categories) + 1.0
            values["emission_probs"] = per_symbol / per_symbol.sum(-1, keepdim=True)
        else:
            values["emission_probs"] = (onehot.T @ steps + 1.0) / (counts[:, None] + 2.0)
        return values

    def _features(self, steps: torch.Tensor) -> torch.Tensor:
        """Rows k-means sees: the values, or one-hot symbols for categorical emissions."""
        if self.config.emission != "categorical":
            return steps
        return torch.nn.functional.one_hot(steps.long(), self.config.categories).flatten(-2).to(steps.dtype)

    def plots(self, x, params):
        from ..evaluation.plots import state_plot

        first = x[:1]
        marginals = self.local_marginals(first, params)["states"][0]
        path = self.map_locals(first, params)["states"][0]
        length = int(first.lengths[0])
        return {
            "states": state_plot(
                first.x[0, :length], marginals[:length], path[:length], title=f"HMM, K={self.K}: first sequence"
            )
        }


def _unpack(x) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(values (N, T, D), lengths (N,) or None)`` of a Batch, a padded tensor or None."""
    if isinstance(x, Batch):
        return x.x, x.lengths
    return x, None


def _locate(batch: Batch, bad: torch.Tensor) -> tuple[int, int, int]:
    """(sequence, step, feature) of the first True of ``bad`` ``(M, D)`` over observed steps."""
    where = step_mask(batch).nonzero()[bad.any(-1).nonzero()[0, 0]]
    col = int(bad[bad.any(-1)][0].nonzero()[0, 0])
    return int(where[0]), int(where[1]), col
