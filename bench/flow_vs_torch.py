"""A normalizing flow's training step in pplvm against the same Pyro transforms trained by a
hand-written PyTorch loop, in one process, alternating the two sides round by round, one thread.

    python bench/flow_vs_torch.py [--steps 30] [--rounds 6] [--threads 1]

Flow: D = 64, block ``[actnorm, affine_coupling, permute]`` × 4 (hidden [128, 128]), and a
MAF variant ``[maf, permute]`` × 2; batch 256 of a fixed Gaussian data set (N = 20000), Adam.
pplvm side: ``Run.from_card`` and its update rule (an SVI step on Trace_ELBO with the empty
guide: exactly -log p(x)). Torch side: a deep copy of the same transform modules,
``TransformedDistribution(Normal(0, I), transforms).log_prob(x)``, the same N / B scaling,
zero_grad / backward / step. Times are CPU-time medians over rounds; goal pplvm / torch <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import pplvm  # noqa: E402
from pplvm.objectives import make_update_rule  # noqa: E402

D, B, N = 64, 256, 20000
VARIANTS = {"coupling": (["actnorm", "affine_coupling", "permute"], 4), "maf": (["maf", "permute"], 2)}


def build(variant: str, data: torch.Tensor):
    transforms, repeat = VARIANTS[variant]
    card = {
        "name": "bench",
        "model": {"family": "flow", "transforms": transforms, "repeat": repeat, "hidden": [128, 128]},
        "guide": {"kind": "none"},
        "objective": {"name": "elbo"},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"batch_size": B, "lr": 1e-3, "progress": False},
    }
    run = pplvm.Run.from_card(card, data=data.numpy())
    rule = make_update_rule(run.model, run.guide, run.card)
    rule.setup(data[:B], N)
    return run.model, rule


def torch_side(model):
    """The same transforms (deep copies) and Adam, trained by hand."""
    flow = copy.deepcopy(model)
    chain = flow.transforms()  # the modules, in generative order (MAF as .inv, permutations)
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    base = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = -dist.TransformedDistribution(base, chain).log_prob(x).sum() * (N / len(x))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def timed(fn, batches) -> float:
    t = time.process_time()
    for x in batches:
        loss = fn(x)
        if not torch.isfinite(loss):  # the trainer's per-step check
            raise RuntimeError("non-finite loss")
    return time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N, D, generator=g) @ torch.randn(D, D, generator=g) * 0.2
    batches = [data[torch.randint(0, N, (B,), generator=g)] for _ in range(args.steps)]
    for variant in VARIANTS:
        pyro.set_rng_seed(0)
        model, rule = build(variant, data)
        hand = torch_side(model)
        mine = {"default": lambda x: rule.step(x, N, 0.0)}
        times = {"pplvm": [], "pplvm_novalidation": [], "torch": []}
        for r in range(args.rounds):
            sides = ["pplvm", "pplvm_novalidation", "torch"]
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == "torch":
                    times[side].append(timed(hand, batches))
                elif side == "pplvm":
                    times[side].append(timed(mine["default"], batches))
                else:
                    with pyro.validation_enabled(False):
                        times[side].append(timed(mine["default"], batches))
        med = {k: statistics.median(v) / args.steps * 1e3 for k, v in times.items()}
        print(
            f"{variant:9s} ms/step: pplvm {med['pplvm']:.2f} (no validation {med['pplvm_novalidation']:.2f}), "
            f"torch {med['torch']:.2f}; ratio {med['pplvm'] / med['torch']:.3f} "
            f"({med['pplvm_novalidation'] / med['torch']:.3f} no validation), goal <= 1.05"
        )


if __name__ == "__main__":
    main()
