"""The learned-variance (hybrid) training step and the full bound's evaluation, pplvm against
the same computations written out in PyTorch (part of ``bench/ddpm_vs_torch.py``).

Both sides use the same network (a copy of pplvm's U-Net with two output blocks: ε̂ and the
raw variance weight v), the same schedule and the same loss:

    L_hybrid = Σ_n [‖ε - ε̂‖² + λ T L_{t-1}(x_n, z_t)]  · N / B,   λ = 1e-3,

with ``L_{t-1}`` the Gaussian KL to the posterior (``t > 1``) or the discretized decoder's NLL
(``t = 1``), the mean μ_θ stopped so that the bound trains only the variance
``exp(v log β_t + (1 - v) log β̃_t)``, v = (raw + 1) / 2 (Nichol & Dhariwal 2021).
The evaluation is the bound ``L_0 + Σ_t L_{t-1} + L_T`` over all T steps (one draw of z_t
per step and datum). Times are CPU seconds of this process (user + system, from
``getrusage``), sides alternating round by round.
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics

import torch

from pplvm.families.diffusion import Diffusion
from pplvm.objectives.diffusion import HYBRID_WEIGHT, DiffusionELBO


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def discretized_nll(x, mean, logvar, levels):
    """-log Σ over pixels of N(mean, e^logvar) integrated over x's bin (chain units [-1, 1])."""
    half, scale = 1.0 / (levels - 1), (0.5 * logvar).exp()
    y = 2 * x - 1
    upper = torch.where(y >= 1 - 1e-6, torch.full_like(y, math.inf), (y + half - mean) / scale)
    lower = torch.where(y <= -1 + 1e-6, torch.full_like(y, -math.inf), (y - half - mean) / scale)
    mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    return -mass.clamp_min(1e-12).log().sum(-1)


def reverse(s, z, t, eps, raw):
    """Mean and log-variance of p(z_{t-1} | z_t), written out; ``t`` a long tensor (B,)."""
    beta, ab = s.betas[t][:, None], s.alphas_bar[t][:, None]
    mean = (z - beta / (1 - ab).sqrt() * eps) / s.alphas[t].sqrt()[:, None]
    v = (raw + 1) / 2
    return mean, v * beta.log() + (1 - v) * s.posterior_log_variance[t][:, None]


def vlb_terms(s, x, z, t, mean, logvar, levels):
    """L_{t-1} per row: KL to q(z_{t-1} | z_t, x) for t > 1, the decoder's NLL where t = 1."""
    y = 2 * x - 1
    mq = s.posterior_coef_x[t][:, None] * y + s.posterior_coef_z[t][:, None] * z
    lq = s.posterior_log_variance[t][:, None]
    kl = 0.5 * (logvar - lq + (lq - logvar).exp() + (mq - mean) ** 2 * (-logvar).exp() - 1).sum(-1)
    first = (t == 1).nonzero().flatten()
    if len(first):
        kl = kl.index_put((first,), discretized_nll(x[first], mean[first], logvar[first], levels))
    return kl


def torch_hybrid_loss(net, s, x, T, levels, num_data):
    t = torch.randint(1, T + 1, (len(x),))
    noise = torch.randn_like(x)
    ab = s.alphas_bar[t][:, None]
    z = ab.sqrt() * (2 * x - 1) + (1 - ab).sqrt() * noise
    eps, raw = net(z, (t - 1).to(x.dtype) / (T - 1)).chunk(2, -1)
    mean, logvar = reverse(s, z, t, eps.detach(), raw)
    loss = ((noise - eps) ** 2).sum(-1) + HYBRID_WEIGHT * T * vlb_terms(s, x, z, t, mean, logvar, levels)
    return loss.sum() * (num_data / len(x))


@torch.no_grad()
def torch_bound(net, s, x, T, levels):
    """-ELBO per datum over all T steps, one network call per step on all the data."""
    y, total = 2 * x - 1, torch.zeros(len(x))
    for step in range(1, T + 1):
        t = torch.full((len(x),), step)
        noise = torch.randn_like(y)
        ab = s.alphas_bar[step]
        z = ab.sqrt() * y + (1 - ab).sqrt() * noise
        eps, raw = net(z, (t - 1).to(x.dtype) / (T - 1)).chunk(2, -1)
        mean, logvar = reverse(s, z, t, eps, raw)
        total += vlb_terms(s, x, z, t, mean, logvar, levels)
    ab = s.alphas_bar[T]
    prior = 0.5 * (ab * y**2 + (1 - ab) - 1 - (1 - ab).log()).sum(-1)
    return total + prior


def hybrid_part(cfg, data, dim, args, device):
    if device.type != "cpu":
        print("hybrid/eval parts: CPU only (getrusage times)")
        return
    cfg = cfg.model_copy(update={"variance": "learned", "steps": args.eval_T})
    T, levels, n = cfg.steps, cfg.levels, len(data)
    data = ((data * (levels - 1)).round() / (levels - 1)).float()
    model = Diffusion(cfg, dim)
    net = Diffusion(cfg, dim).denoiser
    torch.manual_seed(1)
    with torch.no_grad():  # a network that predicts something (the head starts at zero)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    net.load_state_dict(model.denoiser.state_dict())
    s = model.tables(data)
    loss = DiffusionELBO("simple")(model, None)
    opt_p, opt_t = (torch.optim.Adam(m.parameters(), lr=1e-4) for m in (model, net))
    batch = data[torch.randperm(n)[: args.batch]]
    params = sum(p.numel() for p in net.parameters())

    def p_steps():
        for _ in range(args.steps):
            opt_p.zero_grad(set_to_none=True)
            loss(batch, num_data=n).backward()
            opt_p.step()

    def t_steps():
        for _ in range(args.steps):
            opt_t.zero_grad(set_to_none=True)
            torch_hybrid_loss(net, s, batch, T, levels, n).backward()
            opt_t.step()

    def timed(fn):
        u0, s0 = cpu()
        fn()
        u1, s1 = cpu()
        return u1 - u0, s1 - s0

    times = {"pplvm": [], "torch": []}
    if args.reuse:
        from pplvm._allocator import reusing_memory
    with reusing_memory() if args.reuse else contextlib.nullcontext():  # as pplvm's fit runs its steps
        p_steps(), t_steps()  # warm-up
        for _ in range(args.rounds):
            times["pplvm"].append(timed(p_steps))
            times["torch"].append(timed(t_steps))
    print(
        f"hybrid step: image {list(model.image_shape)}, U-Net {params / 1e6:.2f} M parameters, batch {args.batch}, "
        f"T {T}, threads {torch.get_num_threads()}, {'reusing freed memory' if args.reuse else 'glibc defaults'}"
    )
    med = {k: [statistics.median(u + s_ for u, s_ in v) / args.steps, v] for k, v in times.items()}
    for k, (c, v) in med.items():
        u, sy = sum(a for a, _ in v), sum(b for _, b in v)
        print(f"  {k:<6} {c:7.3f} CPU-s/step (user {u:.2f} s, system {sy:.2f} s over {args.rounds} rounds)")
    print(f"  ratio pplvm/torch {med['pplvm'][0] / med['torch'][0]:.3f} (goal <= 1.05)")

    x = data[: args.eval_n]
    model.eval(), net.eval()
    res = {"pplvm": [], "torch": []}
    bounds = {}
    for _ in range(2):
        u0, s0 = cpu()
        bounds["pplvm"] = -model.log_likelihood(x, {})
        u1, s1 = cpu()
        bounds["torch"] = torch_bound(net, s, x, T, levels)
        u2, s2 = cpu()
        res["pplvm"].append((u1 - u0, s1 - s0))
        res["torch"].append((u2 - u1, s2 - s1))
    bpd = {k: float(v.mean()) / (dim * math.log(2)) for k, v in bounds.items()}
    print(f"eval: the bound over T = {T} steps on {len(x)} images (second of two rounds)")
    for k, v in res.items():
        u, sy = v[-1]
        print(f"  {k:<6} user {u:7.2f} s, system {sy:5.2f} s ({100 * sy / u:.1f}% of user), {bpd[k]:.4f} bits/dim")
    (pu, ps), (tu, ts) = res["pplvm"][-1], res["torch"][-1]
    print(f"  ratio pplvm/torch (user + system) {(pu + ps) / (tu + ts):.3f} (goal <= 1.10)")
