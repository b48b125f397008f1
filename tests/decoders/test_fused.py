"""The Triton decoder backend equals the PyTorch reference: fused MLP outputs and gradients,
fused Bernoulli-logits and Gaussian log-likelihoods and their gradients, and whole decoders
under Pyro's ELBO. Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set here before they are imported), which computes in NumPy float32: the tolerances below are
float32 rounding of sums over at most a few hundred terms (relative 1e-5)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

from pplvm.decoders import NetworkConfig, make_decoder  # noqa: E402
from pplvm.decoders.fused import bernoulli_log_prob, gaussian_log_prob  # noqa: E402
from pplvm.decoders.mlp import mlp  # noqa: E402
from pplvm.errors import IncompatibleError  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter and torch both sum in float32; on a GPU, torch's fp32 matmul may use other
# summation orders than the kernel's tiles (still IEEE fp32: TF32 is off by default)
TOL = dict(rtol=1e-4, atol=1e-5)


def _pair(activation, sizes=(7, [20, 33], 19)):
    ref = mlp(sizes[0], sizes[1], sizes[2], activation, backend="torch").to(DEVICE)
    fused = mlp(sizes[0], sizes[1], sizes[2], activation, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "softplus"])
def test_fused_mlp_forward_and_backward_equal_torch(activation):
    ref, fused = _pair(activation)
    x = torch.randn(3, 5, 7, device=DEVICE)  # (particles, batch, features): 15 rows, no tile multiple
    outs, grads = [], []
    for net in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in net.parameters()])
    assert outs[1].shape == (3, 5, 19)
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("x_shape", [(6, 130), (4, 6, 130)])
def test_fused_bernoulli_log_prob_and_gradient(x_shape):
    logits = torch.randn(4, 6, 130, device=DEVICE, requires_grad=True)  # 130 pixels: two column tiles
    x = torch.bernoulli(torch.full(x_shape, 0.4, device=DEVICE))
    fused = bernoulli_log_prob(logits, x)
    ref = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    torch.testing.assert_close(fused, ref, **TOL)
    g = torch.randn(4, 6, device=DEVICE)
    (a,) = torch.autograd.grad((fused * g).sum(), logits)
    (b,) = torch.autograd.grad((ref * g).sum(), logits)
    torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("per_column", [False, True])
def test_fused_gaussian_log_prob_and_gradient(per_column):
    loc = torch.randn(4, 6, 130, device=DEVICE, requires_grad=True)
    raw = torch.randn(130 if per_column else (4, 6, 130), device=DEVICE).exp().requires_grad_(True)
    scale = raw.expand(4, 6, 130)  # a learned per-pixel σ is one column vector expanded over rows
    x = torch.randn(6, 130, device=DEVICE)
    fused = gaussian_log_prob(loc, scale, x)
    ref = dist.Normal(loc, scale).to_event(1).log_prob(x)
    torch.testing.assert_close(fused, ref, **TOL)
    g = torch.randn(4, 6, device=DEVICE)
    a = torch.autograd.grad((fused * g).sum(), [loc, raw])
    b = torch.autograd.grad((ref * g).sum(), [loc, raw])
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_a_triton_decoder_gives_the_torch_decoders_elbo_and_gradients(likelihood):
    """Whole decoders (MLP + head) with the same weights: Pyro's ELBO terms and gradients agree."""
    decoders = {}
    for backend in ("torch", "triton"):
        cfg = NetworkConfig(latent_dim=3, hidden=[16, 24], likelihood=likelihood, backend=backend)
        pyro.set_rng_seed(0)
        decoders[backend] = make_decoder(cfg, 40).to(DEVICE)
    decoders["triton"].load_state_dict(decoders["torch"].state_dict())  # same keys on every backend
    z = torch.randn(2, 5, 3, device=DEVICE)
    x = torch.bernoulli(torch.full((5, 40), 0.3, device=DEVICE))
    values, grads = {}, {}
    for backend, dec in decoders.items():
        p = dec(z)
        values[backend] = p.log_prob(x)
        grads[backend] = torch.autograd.grad(values[backend].sum(), list(dec.parameters()))
    torch.testing.assert_close(values["triton"], values["torch"], **TOL)
    for a, b in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(a, b, **TOL)


def test_triton_without_cuda_or_interpreter_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    net = mlp(4, [8], 2, backend="triton")
    with pytest.raises(IncompatibleError, match="model.backend = 'triton' runs on a CUDA device"):
        net(torch.randn(3, 4))


def test_auto_is_torch(monkeypatch):
    """``auto`` never picks the Triton kernels (slower than eager PyTorch where measured), even
    where they could run (here: the interpreter)."""
    from pplvm.decoders import fused

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(fused, "_kernels", lambda: pytest.fail("auto ran a Triton kernel"))
    ref = mlp(4, [8], 2, backend="torch")
    auto = mlp(4, [8], 2, backend="auto")
    auto.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4)
    assert torch.equal(auto(x), ref(x))
