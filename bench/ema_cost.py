"""What ``training.ema`` costs a step: the CPU time of a small VAE's training step (the plain
Pyro step and the traced one) with and without the EMA update after it, in alternating blocks
on one thread, and the update alone. The update is one ``torch._foreach_lerp_`` over the
parameters (:mod:`pplvm.training._ema`).

Model: the VAE of the binarized-digits recipe shape, 64 pixels (sklearn's digits), hidden
[256, 256], latent 16, Bernoulli decoder, batches of 128.

    python bench/ema_cost.py [--blocks 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=10, help="alternating blocks per side")
    p.add_argument("--steps", type=int, default=20, help="steps per block")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import pplvm
    from pplvm.training._ema import EMA
    from pplvm.training.trainer import to_device

    torch.set_num_threads(1)
    for compile in ("off", "trace"):
        card = {
            "name": "ema_cost",
            "model": {"family": "vae", "latent_dim": 16, "hidden": [256, 256]},
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "digits", "binarize": "threshold"},
            "training": {"epochs": 1, "batch_size": 128, "progress": False, "compile": compile},
        }
        run = pplvm.Run.from_card(card)
        train = run.dataset.train
        trainer = run._trainer(())
        trainer.setup(train)
        batch, n = to_device(train[:128], trainer.device), len(train)
        ema = EMA({"model": run.model, "guide": run.guide}, 0.9999, warmup=True)
        for _ in range(5):  # warm up (the traced step traces on its second step)
            run.rule.step(batch, n, 0.0)
        times: dict[str, list[float]] = {"step": [], "step + ema": [], "ema alone": []}
        t = 0
        for _ in range(args.blocks):
            for side in ("step", "step + ema"):
                start = time.process_time()
                for _ in range(args.steps):
                    run.rule.step(batch, n, 0.0)
                    if side == "step + ema":
                        t += 1
                        ema.update(t)
                times[side].append((time.process_time() - start) / args.steps)
            start = time.process_time()
            for _ in range(args.steps):
                t += 1
                ema.update(t)
            times["ema alone"].append((time.process_time() - start) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        params = sum(p.numel() for p in ema.params)
        print(
            f"compile={compile}: {params} parameters; CPU ms per step: step {med['step'] * 1e3:.3f}, "
            f"step + ema {med['step + ema'] * 1e3:.3f} (ratio {med['step + ema'] / med['step']:.3f}); "
            f"ema update alone {med['ema alone'] * 1e3:.3f} ms = {med['ema alone'] / med['step']:.3f} of a step"
        )


if __name__ == "__main__":
    main()
