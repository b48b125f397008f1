"""Per-epoch overhead over a long run: steps/s at the start and at the end of a 2000-epoch
full-batch GMM fit written to a run directory (checkpoints, metrics, held-out evaluation every
epoch). A constant per-epoch cost gives a ratio end / start near 1.

Data: 272 rows of a two-cluster, two-column table shaped like Old Faithful (eruption
duration, waiting time), generated with a fixed seed (nothing is downloaded).

    python bench/long_run_overhead.py [--epochs 2000] [--window 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--window", type=int, default=100, help="epochs timed at each end")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch

    import pplvm

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    short = rng.normal([2.0, 55.0], [0.3, 6.0], size=(97, 2))
    long = rng.normal([4.3, 80.0], [0.4, 6.0], size=(175, 2))
    x = np.concatenate([short, long])
    card = {
        "name": "faithful",
        "model": {"family": "gmm", "components": 2, "covariance": "full"},
        "objective": {"name": "enum"},
        "data": {"source": "file", "path": "unused.npy", "standardize": True},
        "training": {"epochs": args.epochs, "lr": 0.01, "progress": False},
        "evaluation": {"draws": 10, "chains": 2},
    }
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = pplvm.Run.from_card(card, data=x)
        run.fit(os.path.join(tmp, "run"), callbacks=[lambda trainer, metrics: stamps.append(time.perf_counter())])
    w = args.window
    start = w / (stamps[w] - stamps[0])
    end = w / (stamps[-1] - stamps[-1 - w])
    print(
        f"{args.epochs} epochs (1 step each): {start:.1f} steps/s over epochs 1-{w}, "
        f"{end:.1f} steps/s over the last {w}; end / start = {end / start:.2f}"
    )


if __name__ == "__main__":
    main()
