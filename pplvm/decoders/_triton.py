"""Triton kernels behind the ``triton`` decoder backend (:mod:`pplvm.decoders.fused`).

Imported only when a decoder runs on that backend (``pip install pplvm[cuda]``). Under
``TRITON_INTERPRET=1`` (set before this module is imported) the same kernels run on CPU
tensors through Triton's interpreter, which is how the default test run checks them.

Kernels:

``_linear_act``   ``y = act(x @ Wᵀ + b)`` for ``x`` ``(M, K)``, ``W`` ``(N, K)``: the matrix
                  product with the bias and activation applied in its epilogue (one pass over
                  memory per layer instead of three), fp32 accumulation.
``_act_grad``     ``g = dy * act'(·)`` with ``act'`` read off the layer's *output* ``y``
                  (tanh: 1 − y², relu: y > 0, elu: y > 0 ? 1 : y + 1, softplus: 1 − e^{−y}),
                  so a layer saves only its output for the backward pass.
``_bernoulli_ll`` ``Σ_d x_d l_d − softplus(l_d)`` per row of logits ``l`` ``(M, D)``, reading
                  ``x`` ``(B, D)`` at row ``m mod B`` (particles share data without a copy);
                  its backward ``(x − σ(l)) · g``.
``_gaussian_ll``  ``Σ_d −½((x_d − μ_d)/σ_d)² − log σ_d − ½ log 2π`` likewise, with ``σ``
                  either per element ``(M, D)`` or per column ``(D,)``; its backward.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

ACTIVATION_CODES = {"identity": 0, "tanh": 1, "relu": 2, "elu": 3, "softplus": 4}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@triton.jit
def _activate(acc, ACT: tl.constexpr):
    if ACT == 1:
        acc = 2.0 * tl.sigmoid(2.0 * acc) - 1.0
    elif ACT == 2:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 3:
        acc = tl.where(acc > 0, acc, tl.exp(tl.minimum(acc, 0.0)) - 1.0)
    elif ACT == 4:
        acc = tl.maximum(acc, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(acc)))
    return acc


@triton.jit
def _linear_act(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    K,
    sxm,
    sxk,
    swn,
    swk,
    sym,
    syn,
    ACT: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(
            x_ptr + rm[:, None] * sxm + kk[None, :] * sxk, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0
        )
        w = tl.load(
            w_ptr + rn[None, :] * swn + kk[:, None] * swk, mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0
        )
        if IEEE:
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    acc = _activate(acc + bias[None, :], ACT)
    tl.store(
        y_ptr + rm[:, None] * sym + rn[None, :] * syn,
        acc.to(y_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


@triton.jit
def _act_grad(dy_ptr, y_ptr, g_ptr, numel, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 1:
        d = 1.0 - y * y
    elif ACT == 2:
        d = tl.where(y > 0, 1.0, 0.0)
    elif ACT == 3:
        d = tl.where(y > 0, 1.0, y + 1.0)
    elif ACT == 4:
        d = 1.0 - tl.exp(-y)
    else:
        d = tl.full(y.shape, 1.0, tl.float32)
    tl.store(g_ptr + offs, (dy * d).to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bernoulli_ll(l_ptr, x_ptr, out_ptr, M, D, B, BM: tl.constexpr, BD: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    xr = rm % B
    acc = tl.zeros((BM,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        rd = d0 + tl.arange(0, BD)
        mask = (rm[:, None] < M) & (rd[None, :] < D)
        lg = tl.load(l_ptr + rm[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + xr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        softplus = tl.maximum(lg, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(lg)))
        acc += tl.sum(tl.where(mask, x * lg - softplus, 0.0), axis=1)
    tl.store(out_ptr + rm, acc, mask=rm < M)


@triton.jit
def _bernoulli_ll_grad(l_ptr, x_ptr, g_ptr, dl_ptr, M, D, B, BM: tl.constexpr, BD: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    xr = rm % B
    g = tl.load(g_ptr + rm, mask=rm < M, other=0.0).to(tl.float32)
    for d0 in range(0, D, BD):
        rd = d0 + tl.arange(0, BD)
        mask = (rm[:, None] < M) & (rd[None, :] < D)
        lg = tl.load(l_ptr + rm[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + xr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(
            dl_ptr + rm[:, None] * D + rd[None, :],
            ((x - tl.sigmoid(lg)) * g[:, None]).to(dl_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def _gaussian_ll(
    mu_ptr,
    s_ptr,
    x_ptr,
    out_ptr,
    M,
    D,
    B,
    HALF_LOG_2PI_C: tl.constexpr,
    S_PER_COLUMN: tl.constexpr,
    BM: tl.constexpr,
    BD: tl.constexpr,
):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    xr = rm % B
    acc = tl.zeros((BM,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        rd = d0 + tl.arange(0, BD)
        mask = (rm[:, None] < M) & (rd[None, :] < D)
        mu = tl.load(mu_ptr + rm[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        if S_PER_COLUMN:
            s = tl.load(s_ptr + rd[None, :] + 0 * rm[:, None], mask=mask, other=1.0).to(tl.float32)
        else:
            s = tl.load(s_ptr + rm[:, None] * D + rd[None, :], mask=mask, other=1.0).to(tl.float32)
        x = tl.load(x_ptr + xr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        r = (x - mu) / s
        acc += tl.sum(tl.where(mask, -0.5 * r * r - tl.log(s) - HALF_LOG_2PI_C, 0.0), axis=1)
    tl.store(out_ptr + rm, acc, mask=rm < M)


@triton.jit
def _gaussian_ll_grad(
    mu_ptr,
    s_ptr,
    x_ptr,
    g_ptr,
    dmu_ptr,
    ds_ptr,
    M,
    D,
    B,
    S_PER_COLUMN: tl.constexpr,
    BM: tl.constexpr,
    BD: tl.constexpr,
):
    """``dμ = g (x − μ)/σ²`` and ``dσ = g ((x − μ)²/σ³ − 1/σ)`` per element (a per-column σ's
    gradient is summed over rows by the caller)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    xr = rm % B
    g = tl.load(g_ptr + rm, mask=rm < M, other=0.0).to(tl.float32)
    for d0 in range(0, D, BD):
        rd = d0 + tl.arange(0, BD)
        mask = (rm[:, None] < M) & (rd[None, :] < D)
        offs = rm[:, None] * D + rd[None, :]
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if S_PER_COLUMN:
            s = tl.load(s_ptr + rd[None, :] + 0 * rm[:, None], mask=mask, other=1.0).to(tl.float32)
        else:
            s = tl.load(s_ptr + offs, mask=mask, other=1.0).to(tl.float32)
        x = tl.load(x_ptr + xr[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
        r = (x - mu) / s
        tl.store(dmu_ptr + offs, (g[:, None] * r / s).to(dmu_ptr.dtype.element_ty), mask=mask)
        tl.store(ds_ptr + offs, (g[:, None] * (r * r - 1.0) / s).to(ds_ptr.dtype.element_ty), mask=mask)
