"""Time for pplvm's GMM to reach scikit-learn's held-out log-likelihood, against sklearn's own
fit time, in one process, alternating the two sides.

    python bench/gmm_vs_sklearn.py [--n 100000] [--dim 10] [--k 16] [--repeats 2] [--threads 1]

Data: a synthetic full-covariance mixture (N train rows + N/5 held-out rows, D dims, K
components). scikit-learn: ``GaussianMixture(K, covariance_type="full")`` (k-means init, EM).
pplvm: the Bayesian GMM card (full covariance, MAP guide, enumerated assignments, minibatch
Adam, k-means init), stopped when its held-out log-likelihood per datum is within 0.1% of
sklearn's. Timed: pplvm's set-up (incl. its k-means init) and training steps; the held-out
checks are excluded (sklearn's time likewise excludes its scoring). Both sides use the same
number of threads. Prints each time and the ratio pplvm / sklearn (goal <= 1.0).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-epochs", type=int, default=60)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits
    import numpy as np
    import torch
    from sklearn.mixture import GaussianMixture

    import pplvm
    from pplvm.data import synthetic_mixture

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    n_valid = args.n // 5
    x, _, _ = synthetic_mixture(args.n + n_valid, args.dim, args.k, separation=3.0, seed=0)
    train, valid = x[: args.n], x[args.n :]

    def sklearn_side(seed):
        t0 = time.perf_counter()
        sk = GaussianMixture(args.k, covariance_type="full", random_state=seed).fit(train)
        elapsed = time.perf_counter() - t0
        return elapsed, float(sk.score(valid)), sk.n_iter_

    card = {
        "model": {"family": "gmm", "components": args.k, "covariance": "full"},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {"source": "file", "path": "<bench>", "valid_fraction": 0.0},
        "training": {"epochs": args.max_epochs, "batch_size": 10_000, "lr": 0.03, "progress": False},
    }

    class Reached(Exception):
        pass

    def pplvm_side(target, seed):
        t0 = time.perf_counter()
        run = pplvm.Run.from_card(card, data=train)
        x_valid = torch.as_tensor(valid, dtype=torch.float32)
        spent_checking, trace = [0.0], []

        def check(trainer, metrics):
            t = time.perf_counter()
            ll = run.log_likelihood(x_valid).mean().item()
            spent_checking[0] += time.perf_counter() - t
            trace.append((metrics["epoch"], ll))
            if ll >= target - 0.001 * abs(target):
                raise Reached

        try:
            run.card = pplvm.card_from_dict(pplvm.card_to_dict(run.card), {"training.seed": seed})
            run.fit(callbacks=[check])
            reached = False
        except Reached:
            reached = True
        elapsed = time.perf_counter() - t0 - spent_checking[0]
        return elapsed, trace[-1][1], trace[-1][0], reached

    print(f"N={args.n} D={args.dim} K={args.k} threads={args.threads} held-out={n_valid}")
    sk_times, pp_times = [], []
    for r in range(args.repeats):
        t_sk, ll_sk, iters = sklearn_side(r)
        t_pp, ll_pp, epochs, reached = pplvm_side(ll_sk, r)
        sk_times.append(t_sk)
        pp_times.append(t_pp)
        print(f"[{r}] sklearn: {t_sk:7.2f} s  held-out ll {ll_sk:.5f} ({iters} EM iterations)")
        print(f"[{r}] pplvm:   {t_pp:7.2f} s  held-out ll {ll_pp:.5f} ({epochs} epochs, "
              f"{'reached' if reached else 'did NOT reach'} sklearn within 0.1%)")
    ratio = float(np.median(pp_times) / np.median(sk_times))
    print(f"ratio pplvm / sklearn (median time to sklearn's held-out log-likelihood): {ratio:.2f}x")


if __name__ == "__main__":
    main()
