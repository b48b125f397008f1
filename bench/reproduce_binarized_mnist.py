"""The IWAE paper's binarized-MNIST rows, trained by pplvm beside a hand-written PyTorch loop.

    python bench/reproduce_binarized_mnist.py [--rows vae,iwae5,iwae5_dreg,iwae50,iwae50_dreg]
        [--epochs 20] [--budget-minutes M] [--curve-every 5] [--final-k 5000] [--rows-eval 1000]
        [--recipe paper|torch] [--out bench/results/binarized_mnist]

Data: the statically binarized MNIST of Larochelle & Murray (``../shared/data/binarized_mnist/
train_valid.npz``: 50,000 training images; measured on the 10,000 of ``valid``, since the test
split is not in the file). Networks: the IWAE paper's one-stochastic-layer model (encoder
784-200-200-(50 + 50), decoder 50-200-200-784, tanh, Bernoulli decoder), Adam, batch 100.

Each row trains pplvm's card (``models/vae_binarized_mnist.toml`` for k = 1,
``models/iwae_binarized_mnist.toml`` for k > 1, with the row's objective and k) and a
hand-written loop with the same networks, initialisation, data order (the same shuffle
generator as pplvm's trainer), optimiser and objective, one epoch of each in turn (so both see
the same machine load), on one CPU thread. Both are scored by the same importance-sampling
estimator (below): held-out NLL on a fixed subset of ``valid`` with k = 500 every
``--curve-every`` epochs and k = ``--final-k`` at the end. The NLL difference is paired image by
image, so its standard error is that of the per-image differences.

With ``--budget-minutes``, each side trains until its own training time (evaluations excluded)
reaches the budget, instead of for ``--epochs``. ``--against vae`` makes the hand-written side of
every row the VAE (k = 1): pplvm's card for the row against the hand-written VAE at equal
wall-clock.

``--recipe torch`` runs pplvm with PyTorch's default initialisation, a zero output bias and
ε = 1e-8 (the hand-written side keeps the paper's recipe): the ablation of the recipe.

Writes ``<out>.json`` (every curve point) and ``<out>.png`` (NLL against epochs and against
seconds) and prints the table, with the paper's and pythae's figures beside ours.
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
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pplvm  # noqa: E402
from pplvm.decoders.init import initialize, smoothed_mean  # noqa: E402

# ../shared/data beside the checkout (or beside any folder above it)
DATA = next(
    (
        p / "shared" / "data" / "binarized_mnist" / "train_valid.npz"
        for p in ROOT.parents
        if (p / "shared" / "data" / "binarized_mnist" / "train_valid.npz").is_file()
    ),
    ROOT.parent / "shared" / "data" / "binarized_mnist" / "train_valid.npz",
)
ROWS = {  # name: (objective, k)
    "vae": ("meanfield", 1),
    "iwae5": ("iwae", 5),
    "iwae5_dreg": ("iwae_dreg", 5),
    "iwae2_dreg": ("iwae_dreg", 2),  # cheaper per epoch: candidates for the equal-wall-clock race
    "iwae3_dreg": ("iwae_dreg", 3),
    "iwae50": ("iwae", 50),
    "iwae50_dreg": ("iwae_dreg", 50),
}
# published held-out NLL (nats) on the test split, static binarization, one stochastic layer
PAPER = {"vae": 88.71, "iwae5": 87.63, "iwae50": 87.10}  # Burda et al. 2016, Table 1, 3280 epochs
PYTHAE = {"vae": 89.78, "iwae50": 86.82}  # pythae's reproduced table


# ------------------------------------------------------------------ the hand-written side
class HandVAE(nn.Module):
    """784-200-200-(50+50) tanh encoder, 50-200-200-784 tanh decoder, Glorot weights, the
    decoder's output bias at the logit of the (smoothed) mean pixel, encoder σ = softplus."""

    def __init__(self, x_train: torch.Tensor, latent: int = 50, hidden: int = 200):
        super().__init__()
        d = x_train.shape[1]
        self.enc = nn.Sequential(
            nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent)
        )
        self.dec = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, d)
        )
        initialize(self, "glorot")
        with torch.no_grad():
            self.dec[-1].bias.copy_(smoothed_mean(x_train).logit())

    def encode(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return loc, 1e-3 + F.softplus(raw)

    def log_weights(self, x, k: int, detach_q: bool = False):
        """``log p(x, z_s) - log q(z_s | x)``, ``(k, B)``; ``detach_q`` stops q's parameters in
        ``log q`` (DReG's surrogate)."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn((k, *loc.shape))
        ql, qs = (loc.detach(), scale.detach()) if detach_q else (loc, scale)
        log_q = (-0.5 * ((z - ql) / qs) ** 2 - qs.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = self.dec(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_prior + log_lik - log_q, z

    def loss(self, x, objective: str, k: int):
        """Per-datum loss (a mean over the batch), as hand-written loops have it."""
        if objective == "meanfield":  # the ELBO, KL(q || N(0, I)) in closed form
            loc, scale = self.encode(x)
            z = loc + scale * torch.randn_like(loc)
            logits = self.dec(z)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
            kl = 0.5 * (loc**2 + scale**2 - 1).sum(-1) - scale.log().sum(-1)
            return (rec + kl).mean()
        if objective == "iwae":
            lw, _ = self.log_weights(x, k)
            return -(torch.logsumexp(lw, 0) - math.log(k)).mean()
        # DReG (Tucker et al. 2019): decoder gets the IWAE gradient; encoder the doubly
        # reparameterised one, Σ_s w̃_s² ∂ log w_s / ∂z ∂z/∂φ with q's parameters stopped in log q
        lw, _ = self.log_weights(x, k, detach_q=True)
        w = torch.softmax(lw, 0).detach()
        decoder_part = -(w * lw).sum(0).mean()  # ∇θ of log-mean-exp
        encoder_part = -(w**2 * lw).sum(0).mean()
        return decoder_part, encoder_part


class HandLoop:
    """One epoch at a time; the optimiser is Adam on the per-datum loss."""

    def __init__(self, x_train, objective, k, batch, lr, eps, seed, schedule):
        torch.manual_seed(seed)
        self.model = HandVAE(x_train)
        self.objective, self.k, self.batch = objective, k, batch
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, eps=eps)
        self.lr, self.schedule = lr, schedule
        self.shuffle = torch.Generator().manual_seed(seed)  # the trainer's data order
        self.x = x_train
        self.seconds = 0.0
        self.epochs = 0

    def epoch(self):
        t = time.perf_counter()
        if self.schedule == "iwae":  # 3^i epochs at lr * 10^(-i/7), i = 0..7 (Burda et al. 2016)
            stage = next(i for i in range(8) if self.epochs < (3 ** (i + 1) - 1) // 2 or i == 7)
            self.opt.param_groups[0]["lr"] = self.lr * 10 ** (-stage / 7)
        for idx in torch.randperm(len(self.x), generator=self.shuffle).split(self.batch):
            x = self.x[idx]
            self.opt.zero_grad(set_to_none=True)
            if self.objective == "iwae_dreg":
                dec_loss, enc_loss = self.model.loss(x, self.objective, self.k)
                enc = list(self.model.enc.parameters())
                dec = list(self.model.dec.parameters())
                for p, g in zip(dec, torch.autograd.grad(dec_loss, dec, retain_graph=True)):
                    p.grad = g
                for p, g in zip(enc, torch.autograd.grad(enc_loss, enc)):
                    p.grad = g
            else:
                self.model.loss(x, self.objective, self.k).backward()
            self.opt.step()
        self.seconds += time.perf_counter() - t
        self.epochs += 1

    def networks(self):
        return self.model.encode, self.model.dec


# ------------------------------------------------------------------ the shared estimator
@torch.no_grad()
def held_out_nll(encode, decode, x: torch.Tensor, k: int, seed: int = 0, chunk: int = 2**22) -> torch.Tensor:
    """``-log p(x_n)`` per image ``(N,)`` by importance sampling with the encoder as proposal:
    ``-log (1/k) Σ_s p(x, z_s) / q(z_s | x)``, ``z_s ~ q``. The same draws for both sides
    (a generator seeded by ``seed``); chunked so that no more than ``chunk`` pixels are held."""
    g = torch.Generator().manual_seed(seed)
    out = []
    rows = max(1, chunk // (k * x.shape[1]))
    for xb in x.split(rows):
        loc, scale = encode(xb)
        z = loc + scale * torch.randn((k, *loc.shape), generator=g)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1)
        log_prior = (-0.5 * z**2).sum(-1)
        logits = decode(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
        out.append(-(torch.logsumexp(log_prior + log_lik - log_q, 0) - math.log(k)))
    return torch.cat(out)


# ------------------------------------------------------------------ the pplvm side
def pplvm_card(row: str, epochs: int, data: Path, recipe: str, overrides=()) -> dict:
    objective, k = ROWS[row]
    card = pplvm.config.load_card(
        ROOT / "models" / ("vae_binarized_mnist.toml" if k == 1 else "iwae_binarized_mnist.toml")
    )
    raw = pplvm.config.card_to_dict(card)
    raw["objective"].update(name=objective, num_particles=k)
    raw["data"]["path"] = str(data)
    raw["training"].update(epochs=epochs, progress=False, eval_every=10**6, checkpoint_seconds=10**6, patience=None)
    raw["training"].pop("patience", None)
    if recipe == "torch":
        raw["model"].update(init="torch", output_bias="zero")
        raw["training"]["eps"] = 1e-8
    return pplvm.config.card_to_dict(pplvm.config.card_from_dict(raw, list(overrides)))


def run_row(row, args, x_train, x_eval, log):
    objective, k = ROWS[args.against or row]
    # the callback stops pplvm's trainer: an epoch budget it never reaches leaves out the
    # trainer's own final held-out pass (the shared estimator scores both sides)
    raw = pplvm_card(row, 10**6, args.data, args.recipe, args.set)
    t = raw["training"]
    hand = HandLoop(
        x_train,
        objective,
        k,
        t["batch_size"],
        t["lr"],
        t["eps"] if args.recipe == "paper" else 1e-4,
        t["seed"],
        t["lr_schedule"],
    )
    run = pplvm.Run.from_card(raw)
    curve = {"pplvm": [], "hand": []}
    clock = {"pplvm": 0.0, "last": time.perf_counter()}
    budget = args.budget_minutes * 60 if args.budget_minutes else math.inf

    def score(side, epoch, seconds, k_eval, n_rows):
        if side == "pplvm":
            enc = run.guide.encoder.encoder
            nets = (lambda x: enc(x), run.model.decoder.network)
        else:
            nets = hand.networks()
        nll = held_out_nll(*nets, x_eval[:n_rows], k_eval)
        curve[side].append({"epoch": epoch, "seconds": seconds, "k": k_eval, "nll": float(nll.mean())})
        return nll

    def done(side):
        if args.budget_minutes:
            return (clock["pplvm"] if side == "pplvm" else hand.seconds) >= budget
        return (run.trainer.state.epoch if side == "pplvm" else hand.epochs) >= args.row_epochs

    def curve_point(side):
        ep, sec = (run.trainer.state.epoch, clock["pplvm"]) if side == "pplvm" else (hand.epochs, hand.seconds)
        if ep % args.curve_every == 0 and not any(p["epoch"] == ep for p in curve[side]):
            score(side, ep, sec, 500, args.rows_eval)

    def hand_catches_up():
        """Hand-written epochs until it has done as many epochs (or, under a time budget, as
        many training seconds) as pplvm, so that the two sides alternate."""
        behind = (
            (lambda: hand.seconds < clock["pplvm"])
            if args.budget_minutes
            else (lambda: hand.epochs < run.trainer.state.epoch)
        )
        while not done("hand") and behind():
            hand.epoch()
            curve_point("hand")

    def after_epoch(trainer, metrics):
        clock["pplvm"] += time.perf_counter() - clock["last"]
        curve_point("pplvm")
        hand_catches_up()
        log(
            f"  {row} epoch {trainer.state.epoch}: pplvm {clock['pplvm']:.0f} s, hand-written {hand.epochs} epochs "
            f"{hand.seconds:.0f} s; " + ", ".join(f"{s} {curve[s][-1]['nll']:.2f}" for s in curve if curve[s])
        )
        if done("pplvm"):
            trainer.state.stopped = True
        clock["last"] = time.perf_counter()

    run.fit(callbacks=[after_epoch])
    pplvm_seconds = clock["pplvm"]
    clock["pplvm"] = math.inf  # the rest of the hand-written side's epochs or budget
    hand_catches_up()
    clock["pplvm"] = pplvm_seconds
    final = {
        side: score(side, e, s, args.final_k, args.rows_eval)
        for side, e, s in (("pplvm", run.trainer.state.epoch, clock["pplvm"]), ("hand", hand.epochs, hand.seconds))
    }
    diff = final["pplvm"] - final["hand"]
    return {
        "row": row,
        "objective": ROWS[row][0],
        "k": ROWS[row][1],
        "hand_row": args.against or row,
        "pplvm": {"epochs": run.trainer.state.epoch, "seconds": clock["pplvm"], "nll": float(final["pplvm"].mean())},
        "hand": {"epochs": hand.epochs, "seconds": hand.seconds, "nll": float(final["hand"].mean())},
        "difference": float(diff.mean()),
        "difference_se": float(diff.std() / math.sqrt(len(diff))),
        "curve": curve,
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, r in enumerate(results):
        for side, style in (("pplvm", "-"), ("hand", "--")):
            pts = [p for p in r["curve"][side] if p["k"] == 500]
            label = f"{r['row']} {'pplvm' if side == 'pplvm' else 'hand-written'}"
            for ax, key in zip(axes, ("epoch", "seconds")):
                ax.plot([p[key] for p in pts], [p["nll"] for p in pts], style, color=f"C{i}", label=label)
    axes[0].set(xlabel="epochs", ylabel="held-out NLL, nats (IS, k = 500)")
    axes[1].set(xlabel="training seconds (one CPU thread)")
    axes[0].legend(fontsize=7)
    fig.suptitle("binarized MNIST: pplvm (solid) and a hand-written loop (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--rows", default="vae,iwae5,iwae5_dreg,iwae50,iwae50_dreg")
    p.add_argument(
        "--epochs", default="20", help="epochs of every row, or per row: vae=20,iwae50=3 (rows not named: 20)"
    )
    p.add_argument("--budget-minutes", type=float, default=None)
    p.add_argument("--curve-every", type=int, default=5)
    p.add_argument("--final-k", type=int, default=5000)
    p.add_argument("--rows-eval", type=int, default=1000, help="held-out images scored (the first of valid)")
    p.add_argument(
        "--against",
        choices=tuple(ROWS),
        default=None,
        help="the hand-written side of every row (default: the row's own objective and k)",
    )
    p.add_argument("--recipe", choices=("paper", "torch"), default="paper")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of pplvm's card (e.g. training.compile=off), for ablations",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "binarized_mnist")
    args = p.parse_args(argv)
    for r in args.rows.split(","):
        if r not in ROWS:
            p.error(f"--rows: unknown row {r!r}; expected some of {', '.join(ROWS)}")
    try:
        per_row = dict(part.split("=") for part in args.epochs.split(",")) if "=" in args.epochs else {}
        epochs = {r: int(per_row.get(r, 20 if per_row else args.epochs)) for r in ROWS}
        if set(per_row) - set(ROWS):
            raise ValueError
    except ValueError:
        p.error(f"--epochs: expected a number or row=number pairs, got {args.epochs!r}")
    if not args.data.is_file():
        p.error(f"--data: {str(args.data)!r} does not exist (the binarized MNIST .npz with train and valid)")
    torch.set_num_threads(args.threads)
    with np.load(args.data, allow_pickle=False) as f:
        x_train = torch.as_tensor(f["train"], dtype=torch.float32)
        x_eval = torch.as_tensor(f["valid"], dtype=torch.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def log(line):
        print(line, flush=True)

    results = []
    for row in args.rows.split(","):
        args.row_epochs = epochs[row]
        results.append(run_row(row, args, x_train, x_eval, log))
        args.out.with_suffix(".json").write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )
        plot(results, args.out.with_suffix(".png"))
    print(
        f"\nheld-out NLL (nats), first {args.rows_eval} images of valid, IS k = {args.final_k}; "
        f"recipe {args.recipe}; {args.threads} CPU thread(s)"
        + (f"; hand-written side: {args.against}" if args.against else "")
        + (f"; {args.budget_minutes} training minutes a side" if args.budget_minutes else "")
    )
    print(
        f"{'row':12} {'epochs':>7} {'pplvm':>8} {'s':>6} {'hand':>8} {'s':>6} {'pplvm-hand':>11} {'± se':>6} "
        f"{'paper':>6} {'pythae':>6}"
    )
    for r in results:
        base = r["row"].split("_")[0]
        print(
            f"{r['row']:12} {r['pplvm']['epochs']:>4}/{r['hand']['epochs']:<3} {r['pplvm']['nll']:8.2f} "
            f"{r['pplvm']['seconds']:6.0f} {r['hand']['nll']:8.2f} {r['hand']['seconds']:6.0f} "
            f"{r['difference']:11.2f} {r['difference_se']:6.2f} {PAPER.get(base, float('nan')):6.2f} "
            f"{PYTHAE.get(base, float('nan')):6.2f}"
        )
    print("paper and pythae: the test split after 3280 epochs (Burda et al. 2016; pythae's table)")
    print(
        "time ratio pplvm / hand-written per epoch: "
        + ", ".join(
            f"{r['row']} "
            f"{r['pplvm']['seconds'] / r['pplvm']['epochs'] / (r['hand']['seconds'] / r['hand']['epochs']):.2f}"
            for r in results
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
