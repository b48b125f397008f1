"""pplvm on an NVIDIA GPU against hand-written PyTorch, side by side in one process.

    python bench/gpu.py [--out DIR] [--only step,decoder,ll] [--quick]

Parts (ratios are pplvm / peer; times are CUDA-synchronised medians over rounds):

  step     whole VAE training step (IWAE-paper network 784-200-200-50, Bernoulli, ELBO, Adam),
           batch 128 and 4096, fp32 and bf16 autocast: pplvm's trainer rule (training.compile =
           "auto": traced graph + CUDA graph; decoder backend auto = torch, and triton by name) and the plain Pyro
           step, vs a hand-written eager loop and the same loop under torch.compile.
           Goals: <= 1.0 x eager, <= 1.1 x torch.compile.
  decoder  decoder forward + backward (z (B, 50) -> h -> h -> 784 logits, Bernoulli log-likelihood
           summed over pixels), batch 256 / 4096 / 65536, hidden 200 / 400 / 1024: pplvm's Triton
           backend vs eager and torch.compile. Goals: >= 1.5 x eager, no slower than compile.
  ll       importance-sampled log p(x), k = 5000 over 10,000 synthetic 784-pixel images, same
           chunking on both sides: pplvm's importance_log_likelihood vs a hand-written loop.

Results are printed and written to ``--out`` (default ``$OUT`` or ``bench_out``) as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

D, H, L = 784, 200, 50
N = 60000
RESULTS: list[dict] = []


def emit(**rec) -> None:
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)


DEVICE = torch.device(os.environ.get("PPLVM_BENCH_DEVICE", "cuda"))  # "cpu": a dry run of the script


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each callable, rounds alternating in order, synchronised."""
    for fn in fns.values():
        fn()
    _sync()
    times = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            _sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync()
            times[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------ hand-written
class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 2 * L))

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-3


def dec_net(hidden=H, latent=L):
    return nn.Sequential(
        nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, D)
    )


def hand_loss(enc, dec, x):
    loc, scale = enc(x)
    z = loc + scale * torch.randn_like(loc)
    log_px = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
    log_pz = -0.5 * (z**2).sum(-1)
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log()).sum(-1)
    return -(log_px + log_pz - log_qz).sum() * (N / len(x))


def part_step(args) -> None:
    import pyro

    from pplvm.config import TrainingConfig
    from pplvm.families import FAMILIES
    from pplvm.guides.amortized import AmortizedNormal
    from pplvm.objectives import make_objective, objective_config
    from pplvm.training.compiled import CompiledSVIStep
    from pplvm.training.rules import SVIStep
    from pplvm.training.trainer import precision_context

    dev = DEVICE
    for batch in args.batches:
        for precision in ("fp32", "bf16"):
            x = torch.bernoulli(torch.full((batch, D), 0.3, device=dev))
            fns = {}
            for label, backend, rule_kind in (
                ("pplvm", "auto", "auto"),
                ("pplvm_triton_decoder", "triton", "auto"),
                ("pplvm_plain", "auto", "off"),
            ):
                pyro.set_rng_seed(0)
                cls = FAMILIES["vae"]
                model = cls(cls.Config(backend=backend), D).to(dev)
                guide = AmortizedNormal(model, model.make_encoder()).to(dev)
                elbo = make_objective(model, objective_config(name="elbo"))
                cfg = TrainingConfig(lr=1e-3, precision=precision)
                rule = (
                    CompiledSVIStep(model, guide, elbo, cfg, mode="auto")
                    if rule_kind == "auto"
                    else SVIStep(model, guide, elbo, cfg)
                )
                rule.setup(x, N)
                rule.plan(10**6)  # a long fit: auto traces from the second step

                def step(rule=rule):
                    with pyro.validation_enabled(False), precision_context(precision, dev):
                        rule.step(x, N, 0.0)

                if rule_kind == "auto":
                    for _ in range(3):  # past the plain first step, into the CUDA graph
                        step()
                fns[label] = step
            enc, dec = Enc().to(dev), dec_net().to(dev)
            opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
            compiled_loss = torch.compile(hand_loss)

            def eager(loss_fn=hand_loss):
                opt.zero_grad(set_to_none=True)
                with precision_context(precision, dev):
                    loss = loss_fn(enc, dec, x)
                loss.backward()
                opt.step()

            fns["torch_eager"] = eager
            fns["torch_compile"] = lambda: eager(compiled_loss)
            for _ in range(3):
                fns["torch_compile"]()
            t = timed(fns, args.rounds, args.reps)
            for side in ("pplvm", "pplvm_triton_decoder", "pplvm_plain"):
                emit(
                    part="step",
                    batch=batch,
                    precision=precision,
                    side=side,
                    ms=t[side] * 1e3,
                    eager_ms=t["torch_eager"] * 1e3,
                    compile_ms=t["torch_compile"] * 1e3,
                    vs_eager=t[side] / t["torch_eager"],
                    vs_compile=t[side] / t["torch_compile"],
                )


def part_decoder(args) -> None:
    from pplvm.decoders.fused import bernoulli_log_prob
    from pplvm.decoders.mlp import mlp

    dev = DEVICE
    for hidden in args.hiddens:
        ref = mlp(L, [hidden, hidden], D, "tanh", backend="torch").to(dev)
        fused = mlp(L, [hidden, hidden], D, "tanh", backend="triton").to(dev)
        fused.load_state_dict(ref.state_dict())

        def eager_ll(z, x, net=ref):
            return -F.binary_cross_entropy_with_logits(net(z), x, reduction="none").sum(-1)

        compiled_ll = torch.compile(eager_ll, dynamic=True)
        for batch in args.decoder_batches:
            z = torch.randn(batch, L, device=dev, requires_grad=True)
            x = torch.bernoulli(torch.full((batch, D), 0.3, device=dev))
            g = torch.ones(batch, device=dev)

            def run(fn):
                def go():
                    out = fn()
                    torch.autograd.backward(out, g)

                return go

            fns = {
                "triton": run(lambda: bernoulli_log_prob(fused(z), x)),
                "eager": run(lambda: eager_ll(z, x)),
                "compile": run(lambda: compiled_ll(z, x)),
            }
            # correctness on the GPU: fused equals eager (fp32; TF32 off)
            a, b = bernoulli_log_prob(fused(z), x), eager_ll(z, x)
            err = float((a - b).abs().max() / b.abs().max())
            t = timed(fns, args.rounds, max(1, args.reps // (1 + batch // 4096)))
            emit(
                part="decoder",
                batch=batch,
                hidden=hidden,
                triton_ms=t["triton"] * 1e3,
                eager_ms=t["eager"] * 1e3,
                compile_ms=t["compile"] * 1e3,
                speedup_vs_eager=t["eager"] / t["triton"],
                speedup_vs_compile=t["compile"] / t["triton"],
                max_rel_err=err,
            )


def part_ll(args) -> None:
    import pyro

    from pplvm.families import FAMILIES
    from pplvm.guides.amortized import AmortizedNormal
    from pplvm.inference.importance import importance_log_likelihood

    dev = DEVICE
    cls = FAMILIES["vae"]
    pyro.set_rng_seed(0)
    model = cls(cls.Config(), D).to(dev)
    guide = AmortizedNormal(model, model.make_encoder()).to(dev)
    x = torch.bernoulli(torch.full((args.ll_rows, D), 0.3, device=dev), generator=None)
    k, max_elements = args.ll_k, args.max_elements
    enc_net, dec = guide.encoder.encoder, model.decoder

    def pplvm_side():
        with pyro.validation_enabled(False):
            return importance_log_likelihood(model, guide, x, k=k, max_elements=max_elements, max_plate_nesting=1)

    @torch.no_grad()
    def torch_side():
        rows = min(len(x), max_elements // D)
        particles = min(k, max_elements // (rows * D))
        out = []
        for start in range(0, len(x), rows):
            xb = x[start : start + rows]
            loc, scale = enc_net(xb)
            acc, done = None, 0
            while done < k:
                size = min(particles, k - done)
                z = loc + scale * torch.randn(size, *loc.shape, device=dev)
                logits = dec.network(z)
                log_w = (
                    -F.binary_cross_entropy_with_logits(logits, xb.expand(size, -1, -1), reduction="none").sum(-1)
                    - 0.5 * (z**2).sum(-1)
                    + 0.5 * (((z - loc) / scale) ** 2).sum(-1)
                    + scale.log().sum(-1)
                )
                s = log_w.double().logsumexp(0)
                acc = s if acc is None else torch.logaddexp(acc, s)
                done += size
            out.append(acc - math.log(k))
        return torch.cat(out)

    t = timed({"pplvm": pplvm_side, "torch": torch_side}, rounds=args.ll_rounds, reps=1)
    emit(
        part="ll",
        rows=args.ll_rows,
        k=k,
        max_elements=max_elements,
        pplvm_s=t["pplvm"],
        torch_s=t["torch"],
        ratio=t["pplvm"] / t["torch"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--only", default="step,decoder,ll")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 4096])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[200, 400, 1024])
    ap.add_argument("--decoder-batches", type=int, nargs="+", default=[256, 4096, 65536])
    ap.add_argument("--ll-rows", type=int, default=10000)
    ap.add_argument("--ll-k", type=int, default=5000)
    ap.add_argument("--ll-rounds", type=int, default=2)
    ap.add_argument("--max-elements", type=int, default=2**27)
    args = ap.parse_args()
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device")
    os.makedirs(args.out, exist_ok=True)
    emit(
        part="env",
        device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        torch=torch.__version__,
        tf32=torch.backends.cuda.matmul.allow_tf32,
    )
    for part in args.only.split(","):
        start = time.perf_counter()
        try:
            {"step": part_step, "decoder": part_decoder, "ll": part_ll}[part](args)
        except Exception as err:  # report and go on: one broken part must not lose the others
            import traceback

            traceback.print_exc()
            emit(part=part, error=f"{type(err).__name__}: {err}"[:500])
        emit(part=part, wall_s=time.perf_counter() - start)
        with open(os.path.join(args.out, "gpu_bench.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in RESULTS))


if __name__ == "__main__":
    main()
