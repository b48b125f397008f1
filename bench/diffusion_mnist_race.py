"""pplvm's best 28 x 28 diffusion card against a hand-written DDPM at an equal CPU budget.

    python bench/diffusion_mnist_race.py [--card models/vdm_binarized_mnist.toml] [--minutes 10]
        [--rows 200] [--times 100] [--out bench/results/diffusion_mnist_race]

Data: statically binarized MNIST (``../shared/data/binarized_mnist/train_valid.npz``: 50,000
training images; the held-out images are the first ``--rows`` of ``valid``), pixels 0/1, so
both bounds are of a probability over 2 levels per pixel (bits/dim).

1. pplvm fits the card as written, on one CPU thread, with ``training.max_minutes = --minutes``
   (its held-out checks on 20 of the held-out images; no run directory); the CPU seconds of
   that fit, its checks included, are the budget.
2. The peer (bench/_hand_ddpm.py): Ho et al.'s DDPM — T = 1000 linear β, the fixed reverse
   variance β_t, L_simple, an EMA of the weights (0.9999 with the decay's warm-up), Adam — with
   the card's U-Net class and width, trains on one thread until it has used the same CPU seconds.
3. Both bounds on the same held-out images (pplvm: its ``log_likelihood``, EMA weights; the
   peer: its bound with ``--times`` stratified steps per image), in bits/dim with standard
   errors over images, the per-term tables, and sample grids of each side.

Prints the table and ``pplvm - hand`` in bits/dim (the issue's bar: at least 0.3 below); writes
``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _hand_ddpm import HandDDPM  # noqa: E402

import pplvm  # noqa: E402
from pplvm.decoders.denoisers import UNetDenoiser  # noqa: E402

DATA = next(
    (
        p / "shared" / "data" / "binarized_mnist" / "train_valid.npz"
        for p in ROOT.parents
        if (p / "shared" / "data" / "binarized_mnist" / "train_valid.npz").is_file()
    ),
    None,
)
LN2 = math.log(2)


def bits(nats_per_image: torch.Tensor, dim: int) -> tuple[float, float]:
    """Mean and standard error over images of ``nats / (D ln 2)``."""
    b = nats_per_image.double() / (dim * LN2)
    return float(b.mean()), float(b.std() / math.sqrt(len(b)))


def pplvm_side(card_path: Path, minutes: float, data: Path, out: Path) -> dict:
    overrides = [
        f"data.path={data}",
        f"training.max_minutes={minutes}",
        "training.progress=false",
        "evaluation.export=false",
    ]
    card = pplvm.load_card(card_path, overrides)
    start = time.process_time()
    run = pplvm.fit(card)  # no run directory: no checkpoints, export or figures in the budget
    cpu = time.process_time() - start
    return {"run": run, "cpu": cpu, "steps": run.history[-1]["step"], "card": card}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--card", type=Path, default=ROOT / "models" / "vdm_binarized_mnist.toml")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--times", type=int, default=100, help="the peer's stratified steps per held-out image")
    ap.add_argument("--train-rows", type=int, default=50000)
    ap.add_argument("--samples", type=int, default=16, help="images in each side's sample grid")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "diffusion_mnist_race")
    args = ap.parse_args()
    if DATA is None:
        sys.exit("needs ../shared/data/binarized_mnist/train_valid.npz")
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.out.parent / (args.out.name + "_work")
    work.mkdir(exist_ok=True)

    with np.load(DATA, allow_pickle=False) as f:
        train, valid = f["train"][: args.train_rows], f["valid"][: args.rows]
    subset = work / "train_heldout.npz"  # the fit's own held-out checks: 20 of the held-out images
    np.savez(subset, train=train, valid=valid[:20])
    x_valid = torch.as_tensor(valid, dtype=torch.float32)
    dim = x_valid.shape[1]

    ours = pplvm_side(args.card, args.minutes, subset, work)
    run, cfg = ours["run"], ours["card"].model
    print(f"pplvm: {ours['steps']} steps in {ours['cpu']:.0f} CPU s ({args.card.name})", flush=True)

    torch.manual_seed(0)
    net = UNetDenoiser([1, 28, 28], cfg.channels, cfg.channel_mult, cfg.attention, cfg.embed_dim, 1)
    hand = HandDDPM(net, steps=1000)
    t = ours["card"].training
    hand_steps = hand.train(
        torch.as_tensor(train, dtype=torch.float32),
        ours["cpu"],
        batch=t.batch_size or 128,
        lr=t.lr,
        ema=0.9999,
    )
    print(f"hand-written DDPM: {hand_steps} steps in {ours['cpu']:.0f} CPU s", flush=True)

    start = time.process_time()
    ll = run.log_likelihood(x_valid)
    pplvm_eval = time.process_time() - start
    terms_ours = run.model.likelihood_terms(run._prepare(x_valid), {})
    start = time.process_time()
    terms_hand = hand.terms(x_valid, levels=2, times=args.times)
    hand_eval = time.process_time() - start
    total_hand = sum(terms_hand.values())
    ours_bpd, hand_bpd = bits(-ll, dim), bits(total_hand, dim)
    diff = bits(-ll - total_hand, dim)

    print(f"\nheld-out bits/dim on {len(x_valid)} binarized-MNIST valid images (± standard error over images)")
    print(f"  pplvm {args.card.stem:28s} {ours_bpd[0]:.4f} ± {ours_bpd[1]:.4f}  ({ours['steps']} steps)")
    print(f"  hand-written DDPM (L_simple)   {hand_bpd[0]:.4f} ± {hand_bpd[1]:.4f}  ({hand_steps} steps)")
    print(f"  pplvm - hand                   {diff[0]:+.4f} ± {diff[1]:.4f}  (the bar: -0.3 or lower)")
    print("per-term bits/dim:")
    for name, side in (("pplvm", terms_ours), ("hand", terms_hand)):
        print(f"  {name:6s}" + "  ".join(f"{k} {bits(v, dim)[0]:.4f}" for k, v in side.items()))
    print(f"evaluation CPU s: pplvm {pplvm_eval:.0f}, hand {hand_eval:.0f}")

    samples_ours = run.sample(args.samples).float()
    samples_hand = hand.sample(args.samples, dim)
    result = {
        "minutes": args.minutes,
        "cpu_seconds": ours["cpu"],
        "rows": len(x_valid),
        "pplvm": {"card": args.card.name, "steps": ours["steps"], "bits_per_dim": ours_bpd},
        "hand": {"steps": hand_steps, "bits_per_dim": hand_bpd, "times": args.times},
        "difference": diff,
        "terms": {
            "pplvm": {k: bits(v, dim) for k, v in terms_ours.items()},
            "hand": {k: bits(v, dim) for k, v in terms_hand.items()},
        },
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    from pplvm.evaluation.plots import image_grid

    for name, s in (("pplvm", samples_ours), ("hand", samples_hand)):
        image_grid(s, (28, 28), title=f"{name}: {args.samples} samples").savefig(
            args.out.parent / f"{args.out.name}_{name}.png"
        )
    print(f"wrote {args.out.with_suffix('.json')} and the sample grids")


if __name__ == "__main__":
    main()
