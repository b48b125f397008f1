"""Decoder backends: the same MLP and likelihood heads run by PyTorch, ``torch.compile`` or
fused Triton kernels (:mod:`pplvm.decoders._triton`), picked per decoder by a card's
``model.backend``:

=========== =============================================================================
``auto``     PyTorch (measured on an H200, the fused Triton MLP ran at 0.65–0.81x eager
             PyTorch's speed, 0.39–0.55x at batch 65536: auto never picks a kernel slower
             than eager; ``triton`` asks for it by name)
``triton``   the fused kernels (a CUDA device, or any device under ``TRITON_INTERPRET=1``)
``torch``    plain PyTorch modules
``compile``  ``torch.compile`` of the network
=========== =============================================================================

Every backend computes the same numbers (to float rounding) and has the same parameters, so a
checkpoint trained with one loads under another. With Triton:

- the MLP is one autograd node: each layer is one kernel (matrix product with the bias and
  activation in its epilogue), and only the layers' outputs are saved for the backward pass,
  whose activation gradient is one fused kernel per layer (matrix products by cuBLAS);
- ``log p(x | z)`` of the Bernoulli-logits and Gaussian heads is one kernel reducing over the
  event dims without materialising the per-pixel terms, reading the data rows shared by all
  particles without expanding them; their gradient is one kernel.

Triton is the optional extra ``pplvm[cuda]``; without it ``triton`` is refused by name.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import IncompatibleError

Backend = Literal["auto", "triton", "torch", "compile"]
_BM, _BN, _BK = 32, 64, 32
_ROWS, _COLS = 16, 128


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def uses_triton(backend: Backend, x: torch.Tensor) -> bool:
    """Whether a decoder with ``backend`` runs Triton kernels on ``x`` (a clear error where
    ``triton`` is asked for and cannot run); ``auto`` is PyTorch (see the module docstring)."""
    if backend != "triton":
        return False
    if not triton_installed():
        raise IncompatibleError("model.backend = 'triton' needs Triton: pip install 'pplvm[cuda]'")
    if not (x.is_cuda or _interpreted()):
        raise IncompatibleError(
            f"model.backend = 'triton' runs on a CUDA device (or under TRITON_INTERPRET=1); "
            f"this decoder runs on {x.device.type!r}: use 'auto' or 'torch'"
        )
    return True


def _kernels():
    from . import _triton

    return _triton


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in: autocast's where it is on, else ``x``'s."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


# ------------------------------------------------------------------------------ the MLP
def _linear_act(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: int) -> torch.Tensor:
    k = _kernels()
    m, n = x.shape[0], w.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ieee = x.dtype == torch.float32 and not (x.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    grid = (triton_cdiv(m, _BM), triton_cdiv(n, _BN))
    k._linear_act[grid](
        x,
        w,
        b,
        y,
        m,
        n,
        x.shape[1],
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        y.stride(0),
        y.stride(1),
        ACT=act,
        IEEE=ieee,
        BM=_BM,
        BN=_BN,
        BK=_BK,
    )
    return y


def _act_grad(dy: torch.Tensor, y: torch.Tensor, act: int) -> torch.Tensor:
    dy, g = dy.contiguous(), torch.empty_like(y)
    block = 1024
    _kernels()._act_grad[(triton_cdiv(y.numel(), block),)](dy, y, g, y.numel(), ACT=act, BLOCK=block)
    return g


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _FusedMLP(torch.autograd.Function):
    """``x (M, K0) -> y (M, Kn)`` through ``n`` layers ``(w_i (K_{i+1}, K_i), b_i)``, the
    activation after every layer but the last."""

    @staticmethod
    def forward(ctx, x, act: int, *params):
        outs = [x]
        n = len(params) // 2
        for i in range(n):
            outs.append(_linear_act(outs[-1], params[2 * i], params[2 * i + 1], act if i < n - 1 else 0))
        ctx.act, ctx.n = act, n
        ctx.save_for_backward(*outs, *params)
        return outs[-1]

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        outs, params = saved[: ctx.n + 1], saved[ctx.n + 1 :]
        grads = [None] * len(params)
        for i in reversed(range(ctx.n)):
            w = params[2 * i]
            g = dy.contiguous() if i == ctx.n - 1 else _act_grad(dy, outs[i + 1], ctx.act)
            grads[2 * i] = g.T @ outs[i]
            grads[2 * i + 1] = g.sum(0)
            if i > 0 or ctx.needs_input_grad[0]:
                dy = g @ w
        return (dy if ctx.needs_input_grad[0] else None), None, *grads


class MLP(nn.Sequential):
    """``Linear -> act`` per hidden width, then a final ``Linear``, on any ``backend``; acts on
    the last dim (``(*S, B, K) -> (*S, B, N)``). Same parameters (and state-dict keys) as the
    plain ``nn.Sequential`` on every backend."""

    def __init__(self, *layers: nn.Module, activation: str = "tanh", backend: Backend = "torch"):
        super().__init__(*layers)
        self.activation, self.backend = activation, backend
        self._compiled = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(super().forward, dynamic=True)
            return self._compiled(x)
        if not uses_triton(self.backend, x):
            return super().forward(x)
        dtype = _compute_dtype(x)
        params = [p.to(dtype) for m in self if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
        flat = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
        y = _FusedMLP.apply(flat, _kernels().ACTIVATION_CODES[self.activation], *params)
        return y.reshape(*x.shape[:-1], y.shape[-1])


# ---------------------------------------------------------------------- likelihoods
def _rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """``x`` as ``(B, D)`` rows that ``like`` ``(*S, B, D)`` reads at row ``m mod B``, or None
    where ``x`` does not broadcast that way (then PyTorch scores it)."""
    d = like.shape[-1]
    if x.shape == like.shape:
        return x.reshape(-1, d)
    trailing = x.shape[-2:] if x.dim() >= 2 else None
    if trailing is not None and x.shape == (1,) * (x.dim() - 2) + tuple(trailing) and trailing == like.shape[-2:]:
        return x.reshape(-1, d)
    return None


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, x):
        m, d = logits.shape
        out = torch.empty(m, dtype=torch.float32, device=logits.device)
        _kernels()._bernoulli_ll[(triton_cdiv(m, _ROWS),)](logits, x, out, m, d, x.shape[0], BM=_ROWS, BD=_COLS)
        ctx.save_for_backward(logits, x)
        return out

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved_tensors
        m, d = logits.shape
        dl = torch.empty_like(logits)
        _kernels()._bernoulli_ll_grad[(triton_cdiv(m, _ROWS),)](
            logits, x, g.contiguous(), dl, m, d, x.shape[0], BM=_ROWS, BD=_COLS
        )
        dx = (logits * g[:, None]).reshape(-1, *x.shape).sum(0) if ctx.needs_input_grad[1] else None
        return dl, dx


class _GaussianLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loc, scale, x):
        m, d = loc.shape
        per_column = scale.dim() == 1
        out = torch.empty(m, dtype=torch.float32, device=loc.device)
        k = _kernels()
        k._gaussian_ll[(triton_cdiv(m, _ROWS),)](
            loc,
            scale,
            x,
            out,
            m,
            d,
            x.shape[0],
            HALF_LOG_2PI_C=k.HALF_LOG_2PI,
            S_PER_COLUMN=per_column,
            BM=_ROWS,
            BD=_COLS,
        )
        ctx.save_for_backward(loc, scale, x)
        return out

    @staticmethod
    def backward(ctx, g):
        loc, scale, x = ctx.saved_tensors
        m, d = loc.shape
        per_column = scale.dim() == 1
        dmu, ds = torch.empty_like(loc), torch.empty_like(loc)
        _kernels()._gaussian_ll_grad[(triton_cdiv(m, _ROWS),)](
            loc, scale, x, g.contiguous(), dmu, ds, m, d, x.shape[0], S_PER_COLUMN=per_column, BM=_ROWS, BD=_COLS
        )
        dx = (-dmu).reshape(-1, *x.shape).sum(0) if ctx.needs_input_grad[2] else None
        return dmu, (ds.sum(0) if per_column else ds), dx


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``Σ_d log Bernoulli(x_d | logits_d)``, ``(*S, B)``, by the fused kernel; None where
    ``x`` does not broadcast as rows of ``logits``."""
    rows = _rows(x, logits)
    if rows is None:
        return None
    d = logits.shape[-1]
    out = _BernoulliLogProb.apply(logits.reshape(-1, d).contiguous(), rows.to(logits.dtype).contiguous())
    return out.reshape(logits.shape[:-1])


def gaussian_log_prob(loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``Σ_d log Normal(x_d | loc_d, scale_d)``, ``(*S, B)``, by the fused kernel; ``scale``
    per element or one per column broadcast over rows (a learned per-pixel σ)."""
    rows = _rows(x, loc)
    if rows is None:
        return None
    d = loc.shape[-1]
    if scale.dim() >= 2 and all(s == 0 for s in scale.stride()[:-1]):
        scale = scale[(0,) * (scale.dim() - 1)]  # one σ per column, expanded over rows: read it once
    else:
        scale = scale.expand_as(loc).reshape(-1, d)
    out = _GaussianLogProb.apply(loc.reshape(-1, d).contiguous(), scale.contiguous(), rows.to(loc.dtype).contiguous())
    return out.reshape(loc.shape[:-1])


class FusedEvent(dist.Independent):
    """``Independent(base, 1)`` of a Bernoulli-logits or Normal ``base`` over ``(D,)`` whose
    ``log_prob`` is one fused kernel (same value; everything else is Pyro's ``Independent``)."""

    def log_prob(self, value):
        base = self.base_dist
        if self._validate_args:
            base._validate_sample(value)
        if isinstance(base, dist.Bernoulli):
            out = bernoulli_log_prob(base.logits, value)
        else:
            out = gaussian_log_prob(base.loc, base.scale, value)
        return out if out is not None else super().log_prob(value)

    def expand(self, batch_shape, _instance=None):
        return dist.Independent(self.base_dist.expand(tuple(batch_shape) + self.base_dist.batch_shape[-1:]), 1)


def event(base: dist.TorchDistribution, backend: Backend, raw: torch.Tensor) -> dist.TorchDistribution:
    """``base.to_event(1)``, scored by the fused kernel where ``backend`` runs Triton on ``raw``."""
    if uses_triton(backend, raw):
        return FusedEvent(base, 1)
    return base.to_event(1)


__all__ = [
    "Backend",
    "FusedEvent",
    "MLP",
    "bernoulli_log_prob",
    "event",
    "gaussian_log_prob",
    "triton_installed",
    "uses_triton",
]
