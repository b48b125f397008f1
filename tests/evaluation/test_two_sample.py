"""Two-sample tests against oracles: the unbiased MMD² against a brute-force double sum and
against the closed-form population MMD² between Gaussians; the permutation p-value against
the exact permutation distribution enumerated on a tiny sample; calibration under the null
and power under a shift, for both tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pplvm.errors import DataError
from pplvm.evaluation.two_sample import _mmd2_relabelled, classifier_test, mmd2_unbiased, mmd_test


def _gram(z, h):
    return torch.exp(-torch.cdist(z, z).square() / (2 * h * h))


def test_mmd2_equals_the_double_sum_and_its_relabelled_form():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: math.exp(-float((a - b).square().sum()) / 2)  # noqa: E731  (h = 1)
    n, m = len(x), len(y)
    brute = (
        sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        + sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * sum(k(a, b) for a in x for b in y) / (n * m)
    )
    kernel = _gram(torch.cat([x, y]), 1.0)
    assert float(mmd2_unbiased(kernel, n)) == pytest.approx(brute, rel=1e-12)
    perm = torch.randperm(n + m, generator=g)
    first = torch.zeros(1, n + m, dtype=torch.float64)
    first[0, perm[:n]] = 1
    relabelled = float(_mmd2_relabelled(kernel, first)[0])
    direct = float(mmd2_unbiased(kernel[perm][:, perm], n))
    assert relabelled == pytest.approx(direct, rel=1e-12)


def test_mmd2_is_unbiased_for_the_population_value():
    """x ~ N(0, s² I), y ~ N(δ, s² I) in D dims, Gaussian kernel of bandwidth h:
    MMD² = 2 c (1 - exp(-|δ|² / (2 (h² + 2 s²)))), c = (h² / (h² + 2 s²))^(D/2).
    The mean of 400 unbiased estimates is within 4 standard errors of it."""
    d, s, h = 2, 1.0, 1.5
    delta = torch.tensor([0.7, 0.0], dtype=torch.float64)
    c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    truth = 2 * c * (1 - math.exp(-float(delta.square().sum()) / (2 * (h * h + 2 * s * s))))
    g = torch.Generator().manual_seed(1)
    est = []
    for _ in range(400):
        x = s * torch.randn(30, d, generator=g, dtype=torch.float64)
        y = s * torch.randn(30, d, generator=g, dtype=torch.float64) + delta
        est.append(float(mmd2_unbiased(_gram(torch.cat([x, y]), h), 30)))
    est = np.array(est)
    assert abs(est.mean() - truth) < 4 * est.std() / math.sqrt(len(est))


def test_permutation_p_value_matches_the_exact_permutation_distribution():
    """4 + 4 points: all C(8, 4) = 70 splits enumerate the exact permutation distribution.
    With 20000 random relabellings the Monte-Carlo p-value is within 4 binomial standard
    errors of the exact one."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g) + 0.8
    r = mmd_test(x, y, bandwidth=1.0, permutations=20000, seed=0)
    kernel = _gram(torch.cat([x, y]).double(), 1.0)
    observed = float(mmd2_unbiased(kernel, 4))
    stats = []
    for first in itertools.combinations(range(8), 4):
        order = list(first) + [i for i in range(8) if i not in first]
        stats.append(float(mmd2_unbiased(kernel[order][:, order], 4)))
    exact = float(np.mean(np.array(stats) >= observed - 1e-12))
    assert r.statistic == pytest.approx(observed, rel=1e-6)
    assert abs(r.p_value - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4


@pytest.mark.parametrize("test", ["mmd", "classifier"])
def test_calibrated_under_the_null_and_powerful_under_a_shift(test):
    """Same distribution: over 100 repetitions the rejection rate at level 0.1 is at most 0.2
    (expected 0.1, binomial sd 0.03). A shift of one standard deviation in 2-D with 200 points
    each is rejected at p <= 0.01."""
    run = (
        (lambda a, b, s: mmd_test(a, b, permutations=99, seed=s))
        if test == "mmd"
        else (lambda a, b, s: classifier_test(a, b, seed=s))
    )
    g = torch.Generator().manual_seed(3)
    rejections = 0
    for rep in range(100):
        a, b = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
        rejections += run(a, b, rep).p_value <= 0.1
    assert rejections <= 20
    a, b = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + torch.tensor([1.0, 0.0])
    assert run(a, b, 0).p_value <= 0.01  # 99 permutations: the smallest p-value is 1 / 100


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="columns"):
        mmd_test(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(DataError, match="NaN"):
        classifier_test(torch.full((5, 2), float("nan")), torch.zeros(5, 2))
