"""The maximum mean discrepancy between two samples: the statistic behind the two-sample test
(:mod:`pplvm.evaluation.two_sample`) and a GAN's held-out loss
(:mod:`pplvm.objectives.adversarial`). Gaussian kernel ``k(a, b) = exp(-|a - b|² / (2 h²))``."""

from __future__ import annotations

import torch


def median_bandwidth(z: torch.Tensor, max_rows: int = 2000) -> float:
    """The median pairwise distance of (up to ``max_rows`` of) ``z`` ``(N, D)``."""
    z = z[:max_rows]
    d = torch.cdist(z, z)
    d = d[torch.triu_indices(len(z), len(z), 1).unbind()]
    med = float(d.median()) if len(d) else 1.0
    return med if med > 0 else 1.0


def mmd2_unbiased(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased MMD² from the pooled Gram matrix ``(n + m, n + m)`` whose first ``n`` rows are
    sample x: ``mean_{i≠j} k(x_i,x_j) + mean_{i≠j} k(y_i,y_j) - 2 mean k(x_i, y_j)``."""
    m = len(kernel) - n
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def gaussian_gram(z: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``k(z_i, z_j)`` for the rows of ``z`` ``(N, D)``: ``(N, N)``."""
    return torch.exp(-torch.cdist(z, z).square() / (2 * bandwidth * bandwidth))
