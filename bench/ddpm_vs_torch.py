"""pplvm's diffusion family against a hand-written PyTorch DDPM loop, in one process,
alternating the two sides round by round.

    python bench/ddpm_vs_torch.py [--device cpu|cuda] [--threads 1] [--image digits|cifar|mnist]
                                  [--steps 20] [--rounds 5] [--seconds 20]
                                  [--channels 32] [--mult 1 2 2] [--eval-n 4] [--eval-T 1000]

Same network on both sides (pplvm's :class:`~pplvm.decoders.denoisers.UNetDenoiser`), same
batch, same schedule (``--schedule``, linear by default, T = 1000), Adam. Parts (goal: pplvm / torch):

  step      training step, L_simple (pplvm: ``objective.weighting = "simple"``)          <= 1.05
  step_elbo training step of pplvm's time-subsampled ELBO (analytic KLs, decoder term)
            against the torch L_simple step (no goal: it computes more)
  hybrid    the learned-variance step with Nichol & Dhariwal's hybrid loss (pplvm: variance
            "learned", weighting "simple") against the same loss written out               <= 1.05
  eval      the bound over all T steps on --eval-n images (pplvm's ``likelihood_terms``)
            against a hand-written loop over t, CPU time, user and system           <= 1.10,
            system < 10% of user
  sample    ancestral sampling throughput, T steps (pplvm: ``Diffusion.generate``)     <= 1.05
  bpd       digits only: bits/dim of the bound (pplvm's ``log_likelihood``, T = 1000 terms,
            the same evaluation for all) after ``--seconds`` of training from the same start:
            torch L_simple, pplvm L_simple, pplvm ELBO (higher bits/dim = worse)

A step, on both sides, is: zero_grad, loss, backward, optimiser step, then a device sync.
Times are medians over rounds of ``--steps`` steps. On CPU the default is one thread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from _ddpm_hybrid import hybrid_part

from pplvm.families.diffusion import Diffusion, DiffusionConfig
from pplvm.objectives.diffusion import DiffusionELBO


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_loss(net, abar, y, T):
    """Ho et al.'s L_simple, written out: t ~ U{1..T}, z_t = √ᾱ y + √(1-ᾱ) ε, ‖ε - ε̂‖²."""
    t = torch.randint(1, T + 1, (len(y),), device=y.device)
    noise = torch.randn_like(y)
    a = abar[t][:, None]
    z = a.sqrt() * y + (1 - a).sqrt() * noise
    eps = net(z, (t - 1).to(y.dtype) / (T - 1))
    return ((noise - eps) ** 2).sum(-1).mean()


@torch.no_grad()
def torch_sample(net, s, n, dim, T, device):
    """Ancestral sampling with σ_t² = β_t, written out."""
    z = torch.randn(n, dim, device=device)
    for t in range(T, 0, -1):
        tt = torch.full((n,), t, device=device)
        eps = net(z, (tt - 1).float() / (T - 1))
        mean = (z - s.betas[t] / (1 - s.alphas_bar[t]).sqrt() * eps) / s.alphas[t].sqrt()
        z = mean + (s.betas[t].sqrt() * torch.randn_like(z) if t > 1 else 0)
    return z


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image", choices=["digits", "cifar", "mnist"], default="digits")
    p.add_argument("--channels", type=int, help="U-Net base channels (default 16 digits, 32 others)")
    p.add_argument("--mult", type=int, nargs="+", help="U-Net channel_mult (default [1, 2]; mnist [1, 2, 2])")
    p.add_argument("--eval-n", type=int, default=4, help="images of the eval part")
    p.add_argument("--eval-T", type=int, default=1000, help="T of the hybrid and eval parts")
    p.add_argument("--reuse", action="store_true", help="hybrid steps within reusing_memory (as pplvm's fit)")
    p.add_argument("--only", choices=["all", "hybrid"], default="all", help="hybrid: only the hybrid and eval parts")
    p.add_argument(
        "--schedule",
        choices=["linear", "cosine"],
        default="linear",
        help="linear: Ho et al.'s 1e-4 .. 0.02 over T = 1000",
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=100, help="T used for the sampling part")
    p.add_argument("--seconds", type=float, default=20.0, help="training budget per side for bpd (0: skip)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = {"digits": [1, 8, 8], "cifar": [3, 32, 32], "mnist": [1, 28, 28]}[args.image]
    dim = math.prod(shape)
    T = 1000
    cfg = DiffusionConfig(
        steps=T,
        schedule=args.schedule,
        decoder="discretized",
        levels=17 if args.image == "digits" else 256,
        denoiser="unet",
        channels=args.channels or (16 if args.image == "digits" else 32),
        channel_mult=args.mult or ([1, 2, 2] if args.image == "mnist" else [1, 2]),
        image_shape=shape,
    )
    if args.image == "digits":
        import sklearn.datasets

        data = torch.tensor(sklearn.datasets.load_digits().data / 16.0, dtype=torch.float32, device=device)
    else:
        data = (torch.randint(0, 256, (2048, dim), device=device) / 255.0).float()
    n = len(data)
    hybrid_part(cfg, data, dim, args, device)
    if args.only == "hybrid":
        return

    model = Diffusion(cfg, dim).to(device)
    net = Diffusion(cfg, dim).to(device).denoiser
    net.load_state_dict(model.denoiser.state_dict())
    abar = model.tables(data).alphas_bar
    losses = {"step": DiffusionELBO("simple")(model, None), "step_elbo": DiffusionELBO("elbo")(model, None)}
    opt_p = torch.optim.Adam(model.parameters(), lr=1e-4)
    opt_t = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = data[torch.randperm(n)[: args.batch]]

    def pplvm_steps(kind):
        for _ in range(args.steps):
            opt_p.zero_grad(set_to_none=True)
            losses[kind](batch, num_data=n).backward()
            opt_p.step()
        sync(device)

    def torch_steps():
        for _ in range(args.steps):
            opt_t.zero_grad(set_to_none=True)
            torch_loss(net, abar, 2 * batch - 1, T).backward()
            opt_t.step()
        sync(device)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    pplvm_steps("step"), torch_steps()  # warm-up
    times = {"step": [], "step_elbo": [], "torch": []}
    for _ in range(args.rounds):
        times["step"].append(timed(lambda: pplvm_steps("step")))
        times["torch"].append(timed(torch_steps))
        times["step_elbo"].append(timed(lambda: pplvm_steps("step_elbo")))
    tt = statistics.median(times["torch"]) / args.steps
    print(
        f"device {device}, threads {torch.get_num_threads()}, image {shape}, batch {args.batch}, T {T}, "
        f"{args.schedule} schedule"
    )
    print(f"torch step        {1e3 * tt:8.2f} ms")
    for k in ("step", "step_elbo"):
        tp = statistics.median(times[k]) / args.steps
        print(f"pplvm {k:<11} {1e3 * tp:8.2f} ms   ratio pplvm/torch {tp / tt:.3f}")

    # sampling throughput on a shorter chain (same network)
    Ts = args.sample_steps
    scfg = cfg.model_copy(update={"steps": Ts, "variance": "beta"})
    sm = Diffusion(scfg, dim).to(device)
    sm.denoiser.load_state_dict(model.denoiser.state_dict())
    s = sm.tables(data)
    st = {"pplvm": [], "torch": []}
    for _ in range(max(2, args.rounds // 2)):
        st["pplvm"].append(timed(lambda: (sm.generate(args.sample_n), sync(device))))
        st["torch"].append(timed(lambda: (torch_sample(sm.denoiser, s, args.sample_n, dim, Ts, device), sync(device))))
    sp, stt = statistics.median(st["pplvm"]), statistics.median(st["torch"])
    print(
        f"sampling {args.sample_n} images, T = {Ts}: pplvm {args.sample_n / sp:8.1f} img/s, torch "
        f"{args.sample_n / stt:8.1f} img/s   ratio (time) pplvm/torch {sp / stt:.3f}"
    )

    if args.seconds > 0 and args.image == "digits":

        def train(step_fn):
            g = torch.Generator().manual_seed(0)
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds:
                for idx in torch.randperm(n - 200, generator=g).split(args.batch):  # the last 200 are held out
                    step_fn(data[idx.to(device)])
                    k += 1
                    if time.perf_counter() - t0 >= args.seconds:
                        break
            sync(device)
            return k

        def p_step(kind):
            def step(b):
                opt_p.zero_grad(set_to_none=True)
                losses[kind](b, num_data=n).backward()
                opt_p.step()

            return step

        def t_step(b):
            opt_t.zero_grad(set_to_none=True)
            torch_loss(net, abar, 2 * b - 1, T).backward()
            opt_t.step()

        held = data[-200:]
        start = {k: v.clone() for k, v in model.denoiser.state_dict().items()}

        def bpd(state):
            model.denoiser.load_state_dict(state)
            return -float(model.log_likelihood(held, {}).mean()) / (dim * math.log(2))

        results = {}
        for name, fn in (
            ("torch L_simple", t_step),
            ("pplvm L_simple", p_step("step")),
            ("pplvm ELBO", p_step("step_elbo")),
        ):
            model.denoiser.load_state_dict(start)
            net.load_state_dict(start)
            for o in (opt_p, opt_t):  # fresh optimisers, lr 2e-3
                o.state.clear()
                for gr in o.param_groups:
                    gr["lr"] = 2e-3
            k = train(fn)
            results[name] = (bpd(net.state_dict() if name.startswith("torch") else model.denoiser.state_dict()), k)
        print(
            f"bits/dim of the bound (T = {T}, 200 held-out digits) after {args.seconds:g} s of training each: "
            + ", ".join(f"{k} {v:.4f} ({s} steps)" for k, (v, s) in results.items())
        )


if __name__ == "__main__":
    main()
