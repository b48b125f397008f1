"""pplvm's objectives and importance-sampled log-likelihood against hand-written PyTorch, in one
process, alternating the two sides round by round.

    python bench/objectives_vs_torch.py [--steps 25] [--rounds 6] [--threads 1] [--only vae,iwae,...]

Same networks on both sides: encoder 784-400-(20 loc, 20 softplus scale), decoder 20-400-784
logits, tanh, Bernoulli likelihood; batch 128 of random binary data (N = 60000 for the
minibatch scale), Adam. Parts (goal for the ``(default)`` line, pplvm / torch):

  vae    ELBO step (pplvm's VAE family, AmortizedNormal guide)                  <= 1.0
  iwae   IWAE k=5 step (vectorised particles)                                   <= 1.0
  dreg   IWAE k=5 step with DReG gradients vs a hand-written DReG               <= 1.05
  flow, maf, ddpm, gmm, hmm: coupling and MAF flows, Ho et al.'s L_simple, enumerated GMM and
         HMM steps against hand-written losses (bench/_enum_flow_parts.py)    1.05 / 1.0 / 1.1
  memory peak RSS growth over training steps, each side in its own process     <= 1.20
  ll     importance-sampled log p(x), k=5000, same chunking on both sides      <= 1.10

Each training part prints three pplvm lines: ``(default)``, exactly the step a card gets with
no ``training.compile`` (the rule settled in a fit of ``_policy.FIT_STEPS`` steps, so what
``auto`` chose — traced graph, inductor — is what is timed, and the part says which);
``(trace)``, ``training.compile = "trace"``; ``(plain)``, Pyro's own step (``"off"``). A step,
on both sides, is what the pplvm Trainer does: zero_grad, loss, isfinite check, backward,
optimiser step. Times are CPU-time medians over rounds of ``--steps`` steps (inductor's compile,
done before timing, runs in worker processes and is not counted).

Earlier records (2026-11-21 and 2026-11-26, before the default policy and the fused optimiser)
are in the git history of this file: vae 1.29-1.54 default, iwae 1.16-1.38, dreg 1.28-1.49.

Where pplvm's extra time goes (VAE, forward + backward, CPU ms/step: torch 6.85, pplvm 9.50):
Pyro's validation (distribution argument and support checks every step) 0.76; PyroModule glue
(each access to a plain ``nn.Module`` child inside a PyroModule issues one ``param`` message per
parameter through the whole handler stack, and each PyroModule call enters a param-store
scope) ~0.5; Pyro's own trace / replay / plate / ELBO bookkeeping ~1.4 (a plain-function
Pyro model and guide with the same networks: 8.26). More large temporaries than the hand-written
loop (e.g. ``Bernoulli.log_prob`` negates the full ``(k, B, D)`` array) also mean more page
faults with glibc's default malloc thresholds, hence the second column.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _enum_flow_parts  # noqa: E402  (gmm, hmm, flow, maf, ddpm: beside this file)
from _policy import settled  # noqa: E402

D, H, L, B, N = 784, 400, 20, 128, 60000


def build_pplvm(seed: int = 0):
    """(model, guide): the pplvm VAE family if registered, else the stand-in below."""
    import pyro

    import pplvm  # noqa: F401  (module-local parameters)
    from pplvm.families import FAMILIES
    from pplvm.guides.amortized import AmortizedNormal

    pyro.set_rng_seed(seed)
    cls = FAMILIES["vae"]
    model = cls(cls.Config(latent_dim=L, hidden=[H], activation="tanh", likelihood="bernoulli"), D)
    guide = AmortizedNormal(model, model.make_encoder())
    return model, guide, "pplvm.families.FAMILIES['vae']"


# -------------------------------------------------------------------------- hand-written torch
def build_torch(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 2 * L))
    dec = nn.Sequential(nn.Linear(L, H), nn.Tanh(), nn.Linear(H, D))
    return enc, dec


def torch_log_weights(enc, dec, x, k: int | None, *, stop_q: bool = False):
    """``log p(x, z) − log q(z | x)`` for z ~ q: ``(B,)`` (k None) or ``(k, B)``, and z."""
    import torch
    from torch.nn import functional as F

    loc, raw = enc(x).chunk(2, -1)
    scale = F.softplus(raw) + 1e-3
    shape = loc.shape if k is None else (k, *loc.shape)
    z = loc + scale * torch.randn(shape)
    log_px = -F.binary_cross_entropy_with_logits(dec(z), x.expand(*shape[:-1], D), reduction="none").sum(-1)
    log_pz = -0.5 * (z**2).sum(-1) - 0.5 * L * math.log(2 * math.pi)
    if stop_q:
        loc, scale = loc.detach(), scale.detach()
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1) - 0.5 * L * math.log(2 * math.pi)
    return log_px + log_pz - log_qz, z


def torch_vae_loss(enc, dec, x):
    log_w, _ = torch_log_weights(enc, dec, x, None)
    return -log_w.sum() * (N / len(x))


def torch_iwae_loss(enc, dec, x, k=5):
    log_w, _ = torch_log_weights(enc, dec, x, k)
    return -(log_w.logsumexp(0) - math.log(k)).sum() * (N / len(x))


def torch_dreg_loss(enc, dec, x, k=5):
    log_w, z = torch_log_weights(enc, dec, x, k, stop_q=True)
    w = (log_w - log_w.logsumexp(0, keepdim=True)).exp().detach()
    z.register_hook(lambda g: g * w.unsqueeze(-1))  # w̃ for θ via the surrogate, w̃² for φ
    surrogate = (w * log_w).sum()
    bound = (log_w.detach().logsumexp(0) - math.log(k)).sum()
    return -(bound + surrogate - surrogate.detach()) * (N / len(x))


def torch_log_likelihood(enc, dec, x, k, max_elements):
    """Per-datum IS estimate, chunked exactly as pplvm's importance_log_likelihood chunks."""
    import torch
    from torch.nn import functional as F

    rows = min(len(x), max_elements // D)
    particles = min(k, max_elements // (rows * D))
    out = []
    with torch.no_grad():
        for start in range(0, len(x), rows):
            xb = x[start : start + rows]
            loc, raw = enc(xb).chunk(2, -1)
            scale = F.softplus(raw) + 1e-3
            acc, done = None, 0
            while done < k:
                size = min(particles, k - done)
                z = loc + scale * torch.randn(size, *loc.shape)
                log_w = (
                    -F.binary_cross_entropy_with_logits(dec(z), xb.expand(size, -1, -1), reduction="none").sum(-1)
                    - 0.5 * (z**2).sum(-1)
                    + 0.5 * (((z - loc) / scale) ** 2).sum(-1)
                    + scale.log().sum(-1)
                )
                s = log_w.double().logsumexp(0)
                acc = s if acc is None else torch.logaddexp(acc, s)
                done += size
            out.append(acc - math.log(k))
    return torch.cat(out)


# --------------------------------------------------------------------------------- timing
def make_steps(part: str):
    """Step callables for a training part on the same data: ``{"default": ..., "trace": ...,
    "plain": ..., "torch": ...}`` — the rule a card gets with no ``training.compile``, settled in
    a long fit (``_policy.settled``), the traced graph, Pyro's plain step (validation off after
    the first, as the trainer runs it), and the hand-written step — and what the default runs."""
    import torch

    from pplvm.config import TrainingConfig
    from pplvm.objectives import make_objective, objective_config
    from pplvm.training.compiled import CompiledSVIStep
    from pplvm.training.rules import SVIStep

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((B, D), 0.3), generator=g)
    name, k = {"vae": ("elbo", 1), "iwae": ("iwae", 5), "dreg": ("iwae_dreg", 5)}[part]
    steps, what = {}, ""
    for label, mode in (("default", "auto"), ("trace", "trace"), ("plain", None)):
        model, guide, _ = build_pplvm()
        elbo = make_objective(model, objective_config(name=name, num_particles=k, vectorize_particles=True))
        config = TrainingConfig(lr=1e-3)
        rule = (
            SVIStep(model, guide, elbo, config)
            if mode is None
            else CompiledSVIStep(model, guide, elbo, config, mode=mode)
        )
        rule.setup(x, N)
        steps[label], described = settled(rule, x, N)
        what = what or described
    enc, dec = build_torch()
    opt_t = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    torch_loss = {"vae": torch_vae_loss, "iwae": torch_iwae_loss, "dreg": torch_dreg_loss}[part]

    def torch_step():
        opt_t.zero_grad(set_to_none=True)
        loss = torch_loss(enc, dec, x)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        loss.backward()
        opt_t.step()

    return {**steps, "torch": torch_step}, what


def alternate(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median CPU seconds per call of each callable, timed in rounds whose order alternates.
    CPU time (``time.process_time``) rather than wall time: the machine is shared, and with one
    torch thread all the work is this process's."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t0 = time.process_time()
            for _ in range(reps):
                fn()
            times[name].append((time.process_time() - t0) / reps)
    return {name: statistics.median(t) for name, t in times.items()}


def part_ll(args) -> dict[str, float]:
    import pyro
    import torch

    from pplvm.inference.importance import importance_log_likelihood

    model, guide, _ = build_pplvm()
    enc, dec = build_torch()
    x = torch.bernoulli(torch.full((args.ll_rows, D), 0.3), generator=torch.Generator().manual_seed(1))
    k, max_elements = 5000, 2**23

    def pplvm_side():
        return importance_log_likelihood(model, guide, x, k=k, max_elements=max_elements, max_plate_nesting=1)

    def pplvm_novalid():
        with pyro.validation_enabled(False):
            return pplvm_side()

    def torch_side():
        return torch_log_likelihood(enc, dec, x, k, max_elements)

    pyro.set_rng_seed(0)
    return alternate(
        {"pplvm": pplvm_side, "pplvm_novalid": pplvm_novalid, "torch": torch_side}, rounds=args.ll_rounds, reps=1
    )


# --------------------------------------------------------------------------------- memory
def memory_child(side: str, part: str, steps: int, threads: int) -> None:
    """Run ``steps`` training steps of one side and print, as JSON, the growth of the peak RSS
    over the RSS after set-up (KiB): activations, gradients, optimiser state and any per-step
    bookkeeping (Pyro traces). The kernel's peak counter (VmHWM) is reset after set-up
    (``/proc/self/clear_refs``), so imports, data and model building do not count."""
    import torch

    torch.set_num_threads(threads)
    fns, _ = make_steps(part)
    step = fns["trace" if side == "pplvm" else side]  # the traced graph: no inductor compile per child
    rss_before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(steps):
        step()
    print(json.dumps({"growth_kib": _status_kib("VmHWM") - rss_before, "rss_before_kib": rss_before}))


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def part_memory(args, part: str) -> tuple[float, float]:
    out = {}
    for side in ("pplvm", "torch", "pplvm", "torch"):  # alternate; keep each side's smaller run
        res = subprocess.run(
            [sys.executable, __file__, "--memory-child", side, part, str(args.memory_steps), str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        growth = json.loads(res.stdout.strip().splitlines()[-1])["growth_kib"]
        out[side] = min(out.get(side, math.inf), growth)
    return out["pplvm"], out["torch"]


def main() -> None:
    global B
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=B, help="batch size of the training parts")
    ap.add_argument("--only", default="vae,iwae,dreg,flow,maf,ddpm,gmm,hmm,memory,ll")
    ap.add_argument("--memory-steps", type=int, default=30)
    ap.add_argument("--ll-rows", type=int, default=8)
    ap.add_argument("--ll-rounds", type=int, default=4)
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        side, part, steps, threads = args.memory_child
        memory_child(side, part, int(steps), int(threads))
        return

    import torch

    B = args.batch
    torch.set_num_threads(args.threads)
    parts = args.only.split(",")
    goals = {"vae": 1.0, "iwae": 1.0, "dreg": 1.05, "memory": 1.20, "ll": 1.10}
    print(
        f"threads={args.threads}  batch={B}  OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  torch {torch.__version__}"
    )
    for part in parts:
        if part == "memory":
            for sub in ("vae", "iwae"):
                mp, mt = part_memory(args, sub)
                ratio = mp / mt
                print(
                    f"memory/{sub:5s}  pplvm {mp / 1024:8.1f}  torch {mt / 1024:8.1f} MiB peak RSS growth  "
                    f"ratio {ratio:.3f}  (goal <= {goals['memory']})  {'ok' if ratio <= goals['memory'] else 'MISSED'}"
                )
            continue
        if part == "ll":
            t = part_ll(args)
            for side in ("pplvm", "pplvm_novalid"):
                ratio = t[side] / t["torch"]
                print(
                    f"{'ll' + ('' if side == 'pplvm' else ' (no validation)'):22s} pplvm {t[side]:9.3f}  torch "
                    f"{t['torch']:9.3f} s per {args.ll_rows} rows x k=5000  ratio {ratio:.3f}  (goal <= "
                    f"{goals['ll']})  {'ok' if ratio <= goals['ll'] else 'MISSED'}"
                )
            continue
        if part in ("vae", "iwae", "dreg"):
            fns, what = make_steps(part)
            goal = goals[part]
        elif part in _enum_flow_parts.PARTS:  # the enumerated, flow and diffusion parts (their module)
            fns, what = _enum_flow_parts.make_steps(part)
            goal = _enum_flow_parts.GOALS[part]
        else:
            raise SystemExit(f"--only: unknown part {part!r}")
        t = alternate(fns, args.rounds, args.steps)
        print(f"{part}: the default step: {what}" if part in ("vae", "iwae", "dreg") else f"{part}: {what}")
        for side in [s for s in ("default", "trace", "plain") if s in t]:
            ratio = t[side] / t["torch"]
            verdict = f"(goal <= {goal})  {'ok' if ratio <= goal else 'MISSED'}" if side == "default" else ""
            print(
                f"{f'{part} ({side})':22s} pplvm {t[side] * 1e3:9.3f}  torch {t['torch'] * 1e3:9.3f} ms/step  "
                f"ratio {ratio:.3f}  {verdict}"
            )


if __name__ == "__main__":
    main()
