"""STL ("sticking the landing"): the ELBO's value, an unbiased gradient, and zero guide-gradient
variance at the exact posterior.

Oracle: with a Gaussian guide on the linear-Gaussian model the ELBO is closed form
(``analytic_elbo``), so its gradient is exact. Gradient draws come from a replicated datum
with per-datum guide parameters (see test_dreg.py). Tolerance: |z| < 4.5 per component of the
mean of R = 20000 draws against the exact gradient (4 components: chance failure < 3e-5).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearEncoder, analytic_elbo, make_model, sample_data
from objectives.test_dreg import Z_MAX, R, assert_same_objective, grad_draws, paired_z, replicated
from pyro.infer import RenyiELBO as PyroRenyiELBO
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule

from pplvm.guides.amortized import AmortizedNormal
from pplvm.objectives import IWAE_DReG, TraceSTL_ELBO, make_objective, objective_config


def stl(k: int = 1, vectorize: bool = True) -> TraceSTL_ELBO:
    return TraceSTL_ELBO(num_particles=k, max_plate_nesting=1, vectorize_particles=vectorize)


def standard(k: int = 1, vectorize: bool = True) -> Trace_ELBO:
    return Trace_ELBO(num_particles=k, max_plate_nesting=1, vectorize_particles=vectorize)


@pytest.mark.parametrize("vectorize", [True, False])
def test_loss_is_the_elbo_and_model_gradient_is_standard(vectorize):
    assert_same_objective(stl(3, vectorize), standard(3, vectorize))


def test_stl_is_unbiased_for_the_analytic_elbo_gradient():
    model, x, guide = replicated(shift=0.4, inflate=1.3)
    loc = guide.loc[:1].detach().clone().requires_grad_()
    log_scale = guide.log_scale[:1].detach().clone().requires_grad_()
    (-analytic_elbo(model, x[:1], loc, log_scale.exp())).sum().backward()
    exact = torch.cat([loc.grad, log_scale.grad], -1)[0]
    for elbo in (stl(), standard()):  # the standard estimator checks the oracle itself
        draws = grad_draws(elbo, model, guide, x, seed=2)
        z = (draws.mean(0) - exact) / (draws.std(0) / math.sqrt(R))
        assert z.abs().max() < Z_MAX, (type(elbo).__name__, z)
    assert (exact.abs() / (draws.std(0) / math.sqrt(R))).max() > 10  # not a vacuous comparison


def test_stl_sticks_the_landing():
    """At the exact posterior log w = log p(x) for every z: each STL draw of the guide gradient
    is 0 (float64 rounding), while the standard estimator's variance is O(1)."""
    model, x, guide = replicated(shift=0.0, inflate=1.0, R=2000)
    assert grad_draws(stl(), model, guide, x, seed=2).abs().max() < 1e-10
    assert grad_draws(standard(), model, guide, x, seed=2).var(0).min() > 0.5


def test_stl_sticks_the_landing_with_an_amortized_encoder():
    model = make_model()
    x = sample_data(model, 6)
    enc = LinearEncoder(model.dim, model.latent_dim, torch.float64)
    enc.set_posterior(model)
    guide = AmortizedNormal(model, enc)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        enc.zero_grad()
        stl().differentiable_loss(model, guide, x).backward()
        assert max(p.grad.abs().max() for p in enc.parameters()) < 1e-10


# ------------------------------------------------------------------ a structured guide
class Chain(PyroModule):
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(z2, 1), per datum. Exact posterior:
    z1 | x ~ N(x/3, 2/3), z2 | z1, x ~ N((z1 + x)/2, 1/2)."""

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2, 1.0), obs=x)


class ChainGuide(PyroModule):
    """q(z1) = N(a, s1), q(z2 | z1) = N(c z1 + d, s2), per-datum parameters: q(z2 | z1)
    depends on the earlier draw, so stopping only φ (not z1) matters."""

    def __init__(self, x, exact: bool):
        super().__init__()
        off = 0.0 if exact else 0.5
        self.a = torch.nn.Parameter(x / 3 + off)
        self.log_s1 = torch.nn.Parameter(torch.full_like(x, 0.5 * math.log(2 / 3) + off))
        self.c = torch.nn.Parameter(torch.full_like(x, 0.5 + off))
        self.d = torch.nn.Parameter(x / 2 - off)
        self.log_s2 = torch.nn.Parameter(torch.full_like(x, 0.5 * math.log(1 / 2) + off))

    def forward(self, x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(self.a, self.log_s1.exp()))
            pyro.sample("z2", dist.Normal(self.c * z1 + self.d, self.log_s2.exp()))

    def grads(self) -> torch.Tensor:
        return torch.stack([p.grad for p in (self.a, self.log_s1, self.c, self.d, self.log_s2)], -1)


def chain_draws(elbo, guide, x, seed):
    pyro.set_rng_seed(seed)
    guide.zero_grad()
    elbo.loss_and_grads(Chain(), guide, x)
    return guide.grads()


def test_structured_guide():
    """The stopped guide keeps q(z2 | z1)'s dependence on z1: at the exact posterior STL and
    DReG give 0 for every draw; off it, both are unbiased (paired with the standard estimators
    on the same ε, |z| < 4.5 over 5 components)."""
    x = torch.full((R,), 1.3, dtype=torch.float64)
    guide = ChainGuide(x, exact=True)
    assert chain_draws(stl(), guide, x, 0).abs().max() < 1e-10
    assert (
        chain_draws(IWAE_DReG(num_particles=4, max_plate_nesting=1, vectorize_particles=True), guide, x, 0).abs().max()
        < 1e-10
    )
    assert chain_draws(standard(), guide, x, 0).var(0).min() > 0.1
    guide = ChainGuide(x, exact=False)
    assert paired_z(chain_draws(stl(), guide, x, 1), chain_draws(standard(), guide, x, 1)).abs().max() < Z_MAX
    dreg = IWAE_DReG(num_particles=4, max_plate_nesting=1, vectorize_particles=True)
    iwae = PyroRenyiELBO(alpha=0.0, num_particles=4, max_plate_nesting=1, vectorize_particles=True)
    assert paired_z(chain_draws(dreg, guide, x, 1), chain_draws(iwae, guide, x, 1)).abs().max() < Z_MAX


def test_make_objective():
    elbo = make_objective(make_model(), objective_config(name="stl", num_particles=2))
    assert isinstance(elbo, TraceSTL_ELBO) and elbo.num_particles == 2


# ------------------------------------------------------------- other kinds of guide
def normal_mean_model(x):
    """μ ~ N(0, 1), x_i | μ ~ N(μ, 1): a global latent; posterior N(Σx / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def test_autoguide_on_a_global_latent_sticks_the_landing():
    """PyroParam parameters (AutoNormal) are stopped too, and a global site (the data plate is
    summed into one weight per particle) is handled: at the exact posterior STL's and DReG's
    gradients are 0 for every draw, the standard estimator's are not."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value

    x = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    n = len(x)
    post_loc, post_scale = x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5
    guide = AutoNormal(normal_mean_model, init_loc_fn=init_to_value(values={"mu": post_loc}), init_scale=post_scale)
    guide(x)
    for elbo, zero in [
        (stl(4), True),
        (IWAE_DReG(num_particles=4, max_plate_nesting=1, vectorize_particles=True), True),
        (standard(4), False),
    ]:
        for seed in range(3):
            pyro.set_rng_seed(seed)
            guide.zero_grad()
            elbo.differentiable_loss(normal_mean_model, guide, x).backward()
            grad = torch.cat([p.grad.flatten() for p in guide.parameters()])
            assert (grad.abs().max() < 1e-10) == zero, (type(elbo).__name__, grad)


def test_global_param_store_guide_sticks_the_landing():
    """A plain-function guide with ``pyro.param`` statements (global param store): the handler
    stops them; at the exact posterior STL's gradient is 0, the standard one's is not."""
    x = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    n = len(x)

    def guide(x):
        loc = pyro.param("q_loc", x.sum() / (n + 1))
        log_scale = pyro.param("q_log_scale", torch.tensor(-0.5 * math.log(n + 1), dtype=x.dtype))
        pyro.sample("mu", dist.Normal(loc, log_scale.exp()))

    for elbo, zero in [(stl(4), True), (standard(4), False)]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo.differentiable_loss(normal_mean_model, guide, x).backward()
        grads = torch.stack([pyro.param(k).unconstrained().grad for k in ("q_loc", "q_log_scale")])
        assert (grads.abs().max() < 1e-10) == zero, (type(elbo).__name__, grads)
