"""Two-sample tests: do samples of a model and held-out data come from the same distribution?

They need only samples, so they compare every family by one measure — a GAN (no likelihood),
a VAE, a flow, a mixture — against data::

    r = mmd_test(model_samples, data, permutations=500, seed=0)   # r.statistic, r.p_value
    r = classifier_test(model_samples, data, seed=0)              # r.statistic = held-out accuracy
    r = two_sample(run, data, n=1000)                             # both, for a fitted run

``mmd_test``: the unbiased estimate of the squared maximum mean discrepancy with a Gaussian
kernel (Gretton et al. 2012), bandwidth by the median heuristic on the pooled sample, and a
permutation p-value ``(1 + #{MMD²_perm ≥ MMD²}) / (1 + P)``.

``classifier_test``: a classifier two-sample test (Lopez-Paz & Oquab 2017): a k-nearest-
neighbour (or logistic) classifier is trained to tell the samples apart on half of them; under
the null its accuracy on the other half is Binomial(m, 1/2) / m, which gives the p-value.

Shapes: ``x`` ``(N, D)``, ``y`` ``(M, D)`` (sequences are flattened per datum).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..data.base import values
from ..errors import DataError
from ..inference.mmd import median_bandwidth, mmd2_unbiased


@dataclass(frozen=True)
class TwoSampleResult:
    """``statistic``: MMD² (``mmd``) or held-out accuracy (``classifier``); ``p_value`` under
    the null that both samples share one distribution; ``detail``: bandwidth, permutations..."""

    test: str
    statistic: float
    p_value: float
    n_x: int
    n_y: int
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (torch.as_tensor(values(v)).detach().to(torch.float64).cpu() for v in (x, y))
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"two-sample test: the samples have {x.shape[1]} and {y.shape[1]} columns")
    if len(x) < 2 or len(y) < 2:
        raise DataError("two-sample test: each sample needs at least 2 rows")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise DataError("two-sample test: the samples contain NaN or inf")
    return x, y


def _mmd2_relabelled(kernel: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """:func:`mmd2_unbiased` for each relabelling of the pooled sample: ``first`` ``(P, n + m)``
    marks (1) the rows taken as sample x. Returns ``(P,)``."""
    rest = 1 - first
    n, m = first.sum(1), rest.sum(1)
    diag = kernel.diagonal()
    k_first, k_rest = first @ kernel, rest @ kernel
    kxx = (k_first * first).sum(1) - first @ diag
    kyy = (k_rest * rest).sum(1) - rest @ diag
    kxy = (k_first * rest).sum(1)
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)


def mmd_test(x, y, *, bandwidth: float | None = None, permutations: int = 500, seed: int = 0) -> TwoSampleResult:
    """MMD² with ``k(a, b) = exp(-|a - b|² / (2 h²))`` and its permutation p-value."""
    x, y = _pair(x, y)
    if permutations < 1:
        raise DataError(f"permutations: expected at least 1, got {permutations}")
    pooled = torch.cat([x, y])
    h = median_bandwidth(pooled) if bandwidth is None else float(bandwidth)
    kernel = torch.exp(-torch.cdist(pooled, pooled).square() / (2 * h * h))
    n = len(x)
    observed = mmd2_unbiased(kernel, n)
    g = torch.Generator().manual_seed(seed)
    exceed = 0
    for chunk in torch.arange(permutations).split(64):  # 64 relabellings at a time, as 0/1 rows
        first = torch.stack([torch.randperm(len(pooled), generator=g) < n for _ in chunk]).to(kernel.dtype)
        exceed += int((_mmd2_relabelled(kernel, first) >= observed).sum())
    return TwoSampleResult(
        "mmd",
        float(observed),
        (1 + exceed) / (1 + permutations),
        n,
        len(y),
        {"bandwidth": h, "permutations": permutations, "kernel": "gaussian"},
    )


def mmd_bytes(rows: int) -> int:
    """Bytes :func:`mmd_test` holds for a pooled sample of ``rows``: the ``rows x rows`` float64
    distances, their squares and the kernel."""
    return 3 * 8 * rows * rows


def _check_mmd_memory(n: int | None, num_data: int, memory_mb: float) -> None:
    """Refuse ``n`` samples whose MMD kernel beside ``num_data`` rows exceeds ``memory_mb``."""
    rows = (n or num_data) + num_data
    if mmd_bytes(rows) <= memory_mb * 2**20:
        return
    most = math.isqrt(int(memory_mb * 2**20) // mmd_bytes(1)) - num_data
    what = f"n = {n}" if n is not None else f"n (as many samples as the {num_data} data rows)"
    advice = (
        f"at most n = {most} fit beside the {num_data} data rows"
        if most >= 2
        else f"the {num_data} data rows alone do not fit"
    )
    raise DataError(
        f"{what}: the MMD test's kernel over {rows} rows takes {mmd_bytes(rows) / 2**20:.4g} MiB, more "
        f"than evaluation.memory_mb = {memory_mb:g}; {advice} (or raise evaluation.memory_mb)"
    )


def classifier_test(x, y, *, classifier: Literal["knn", "logistic"] = "knn", seed: int = 0) -> TwoSampleResult:
    """Classifier two-sample test: accuracy on a held-out half and its one-sided binomial p-value.
    The samples are balanced to the smaller size first. ``knn``: k = √(training size)."""
    from scipy.stats import binom
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    size = min(len(x), len(y))
    x = x.numpy()[rng.permutation(len(x))[:size]]
    y = y.numpy()[rng.permutation(len(y))[:size]]
    z = np.concatenate([x, y])
    label = np.r_[np.zeros(size), np.ones(size)]
    order = rng.permutation(2 * size)
    half = size  # train on one half, test on the other
    train, test = order[:half], order[half:]
    scale = z[train].std(0) + 1e-12
    z = (z - z[train].mean(0)) / scale
    if classifier == "knn":
        model = KNeighborsClassifier(n_neighbors=max(1, int(math.sqrt(half))))
    elif classifier == "logistic":
        model = LogisticRegression(max_iter=1000)
    else:
        raise DataError(f"classifier: expected 'knn' or 'logistic', got {classifier!r}")
    model.fit(z[train], label[train])
    correct = int((model.predict(z[test]) == label[test]).sum())
    m = len(test)
    p = float(binom.sf(correct - 1, m, 0.5))  # P(Binomial(m, 1/2) >= correct)
    return TwoSampleResult("classifier", correct / m, p, len(x), len(y), {"classifier": classifier, "test_size": m})


def two_sample(
    run,
    data,
    *,
    n: int | None = None,
    permutations: int = 500,
    seed: int = 0,
    tests: tuple[str, ...] = ("mmd", "classifier"),
) -> dict[str, TwoSampleResult]:
    """The tests between ``n`` samples of a fitted run (default: as many as ``data`` rows) and
    ``data`` ``(N, D)`` in the data's own units. Works for every family: it needs only
    ``run.sample``."""
    data = values(data)
    if "mmd" in tests:  # before drawing a sample that could never be tested
        _check_mmd_memory(n, len(data), run.card.evaluation.memory_mb)
    samples = values(run.sample(n or len(data), seed=seed))
    out = {}
    if "mmd" in tests:
        out["mmd"] = mmd_test(samples, data, permutations=permutations, seed=seed)
    if "classifier" in tests:
        out["classifier"] = classifier_test(samples, data, seed=seed)
    return out


__all__ = ["TwoSampleResult", "classifier_test", "median_bandwidth", "mmd2_unbiased", "mmd_test", "two_sample"]
