"""A GAN's training step in pplvm (AdversarialStep: a discriminator and a generator update,
two Adam optimisers) against a hand-written PyTorch loop over the same networks, in one
process, alternating the sides round by round, one thread.

    python bench/gan_vs_torch.py [--steps 30] [--rounds 6] [--threads 1]

Networks: generator 64-256-256-784 (ReLU, sigmoid outputs: the decoder of a Bernoulli VAE read
through its mean), discriminator 784-256-256-1; batch 128 of random images in [0, 1]
(N = 60000). Losses: non-saturating (``gan``) and hinge (``gan_hinge``). Torch side: deep
copies of the same modules, the same losses written out, zero_grad / backward / step for each
network. Times are CPU-time medians over rounds; goal pplvm / torch <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyro  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pplvm  # noqa: E402
from pplvm.objectives import make_update_rule  # noqa: E402

D, L, B, N = 784, 64, 128, 60000


def build(loss: str, data: torch.Tensor):
    card = {
        "name": "bench",
        "model": {
            "family": "gan",
            "latent_dim": L,
            "hidden": [256, 256],
            "activation": "relu",
            "discriminator_hidden": [256, 256],
            "image_shape": [28, 28],
        },
        "guide": {"kind": "none"},
        "objective": {"name": loss},
        "data": {"source": "file", "path": "unused.npy", "valid_fraction": 0.0},
        "training": {"batch_size": B, "lr": 2e-4, "progress": False},
    }
    run = pplvm.Run.from_card(card, data=data[:512].numpy())
    rule = make_update_rule(run.model, run.guide, run.card)
    rule.setup(data[:B], N)
    return run.model, rule


def torch_side(model, loss: str):
    gen = copy.deepcopy(model.decoder.network)  # z -> logits; the generator is sigmoid(logits)
    disc = copy.deepcopy(model.discriminator)
    g_opt = torch.optim.Adam(gen.parameters(), lr=2e-4)
    d_opt = torch.optim.Adam(disc.parameters(), lr=2e-4)

    def step(real):
        b = len(real)
        with torch.no_grad():
            fake = torch.sigmoid(gen(torch.randn(b, L)))
        d_real, d_fake = disc(real).squeeze(-1), disc(fake).squeeze(-1)
        if loss == "gan":
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        else:
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        score = disc(torch.sigmoid(gen(torch.randn(b, L)))).squeeze(-1)
        g_loss = F.softplus(-score).mean() if loss == "gan" else -score.mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        return d_loss.detach() * N

    return step


def timed(fn, batches) -> float:
    t = time.process_time()
    for x in batches:
        if not torch.isfinite(fn(x)):
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
    data = torch.rand(2048, D, generator=g)
    batches = [data[torch.randint(0, len(data), (B,), generator=g)] for _ in range(args.steps)]
    for loss in ("gan", "gan_hinge"):
        pyro.set_rng_seed(0)
        model, rule = build(loss, data)
        hand = torch_side(model, loss)
        times = {"pplvm": [], "pplvm_novalidation": [], "torch": []}
        sides = list(times)
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == "torch":
                    times[side].append(timed(hand, batches))
                    continue
                with pyro.validation_enabled(side == "pplvm"):  # the trainer validates the first step only
                    times[side].append(timed(lambda x: rule.step(x, N, 0.0), batches))
        med = {k: statistics.median(v) / args.steps * 1e3 for k, v in times.items()}
        print(
            f"{loss:9s} ms/step: pplvm {med['pplvm']:.2f} (no validation {med['pplvm_novalidation']:.2f}), "
            f"torch {med['torch']:.2f}; ratio {med['pplvm'] / med['torch']:.3f} "
            f"({med['pplvm_novalidation'] / med['torch']:.3f} no validation), goal <= 1.05"
        )


if __name__ == "__main__":
    main()
