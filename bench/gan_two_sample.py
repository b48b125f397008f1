"""The shipped ``models/gan_digits.toml`` against its own two-sample test, over several seeds.

    python bench/gan_two_sample.py [--seeds 0 1 2] [--threads 1] [--set training.epochs=100 ...]

Each seed fits the card as shipped (``training.seed`` = the seed; ``--set key=value`` overrides
anything else), then draws as many samples as the card's held-out test digits and runs
:func:`pplvm.evaluation.two_sample.two_sample` against them, exactly as
``pplvm two-sample RUN`` does: the MMD permutation test (500 permutations) and the kNN classifier
two-sample test. The bar (issue 23): MMD p > 0.05 and classifier accuracy <= 0.6. Prints one
line per seed with the fit's CPU and wall time, then the seeds' range.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import pplvm  # noqa: E402
from pplvm.evaluation.two_sample import two_sample  # noqa: E402

CARD = Path(__file__).parents[1] / "models" / "gan_digits.toml"


def one(seed: int, overrides: dict) -> tuple[float, float, float, float, float]:
    """(MMD p, classifier accuracy, classifier p, fit CPU seconds, fit wall seconds) for ``seed``."""
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.perf_counter()
        run = pplvm.fit(
            CARD, Path(tmp) / "run", overrides={"training.seed": seed, "training.progress": False, **overrides}
        )
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        test = run.transform.inverse(run.dataset.test)
        r = two_sample(run, test, permutations=500, seed=seed)
    return r["mmd"].p_value, r["classifier"].statistic, r["classifier"].p_value, cpu, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="card overrides (TOML values)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    overrides = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (s.split("=", 1) for s in a.set)}
    print(f"card {CARD.name}, overrides {overrides or 'none'}, {a.threads} thread(s)")
    rows = []
    for seed in a.seeds:
        rows.append(one(seed, overrides))
        mmd_p, acc, acc_p, cpu, wall = rows[-1]
        ok = "pass" if mmd_p > 0.05 and acc <= 0.6 else "FAIL"
        print(
            f"seed {seed}: MMD p = {mmd_p:.3f}, classifier accuracy = {acc:.3f} (p = {acc_p:.3g}) "
            f"[{ok}]; fit {cpu:.1f} CPU s, {wall:.1f} s wall",
            flush=True,
        )
    passed = sum(r[0] > 0.05 and r[1] <= 0.6 for r in rows)
    print(
        f"{passed}/{len(rows)} seeds pass; MMD p {min(r[0] for r in rows):.3f}..{max(r[0] for r in rows):.3f}, "
        f"accuracy {min(r[1] for r in rows):.3f}..{max(r[1] for r in rows):.3f}"
    )


if __name__ == "__main__":
    main()
