"""A hand-written DDPM (Ho et al. 2020), the peer of bench/diffusion_mnist_race.py: T linear-β
steps, ε-prediction trained by L_simple, the fixed reverse variance σ_t² = β_t, an EMA of the
weights, and its variational bound in bits/dim with a discretized decoder at t = 1 (data on K
levels of [0, 1], chain units y = 2x - 1). Plain PyTorch: nothing here comes from pplvm but the
U-Net's class, so both sides of the race train the same network."""

from __future__ import annotations

import copy
import math
import time

import torch


class HandDDPM:
    def __init__(self, net: torch.nn.Module, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.net, self.T = net, steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        f = torch.float32
        self.betas, self.abar, self.abar_prev = betas.to(f), abar.to(f), abar_prev.to(f)
        self.alphas = (1 - betas).to(f)
        self.post_var = (betas * (1 - abar_prev) / (1 - abar)).to(f)  # β̃_t (t = 1: 0)
        self.ema = copy.deepcopy(net).requires_grad_(False)

    def time(self, t: torch.Tensor) -> torch.Tensor:  # the U-Net's time input, as pplvm feeds it
        return t.float() / max(self.T - 1, 1)

    def noised(self, y: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.abar[t][:, None]
        return a.sqrt() * y + (1 - a).sqrt() * eps

    def loss(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L_simple: ‖ε - ε̂(z_t, t)‖² per datum, averaged (t uniform over 0..T-1: step t + 1)."""
        t = torch.randint(0, self.T, (len(y),), generator=generator)
        eps = torch.randn(y.shape, generator=generator)
        return ((eps - self.net(self.noised(y, t, eps), self.time(t))) ** 2).sum(-1).mean()

    @torch.no_grad()
    def update_ema(self, step: int, decay: float) -> None:
        d = min(decay, (1 + step) / (10 + step))  # the warm-up of the decay
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p, 1 - d)

    def train(self, x: torch.Tensor, cpu_seconds: float, *, batch: int, lr: float, ema: float, seed: int = 0):
        """Adam on shuffled minibatches until this process has used ``cpu_seconds``; returns steps."""
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        y, step, start = 2 * x - 1, 0, time.process_time()
        while time.process_time() - start < cpu_seconds:
            for idx in torch.randperm(len(y), generator=g).split(batch):
                loss = self.loss(y[idx], g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                opt.step()
                self.update_ema(step, ema)
                step += 1
                if time.process_time() - start >= cpu_seconds:
                    break
        return step

    # ------------------------------------------------------------------ the bound
    def _reverse(self, net, z, t):
        eps = net(z, self.time(t))
        b, a, ab = (v[t][:, None] for v in (self.betas, self.alphas, self.abar))
        return (z - b / (1 - ab).sqrt() * eps) / a.sqrt(), b.log().expand_as(z)

    @staticmethod
    def _kl(m1, lv1, m2, lv2):
        return 0.5 * (lv2 - lv1 + (lv1.exp() + (m1 - m2) ** 2) / lv2.exp() - 1)

    def _decoder_nll(self, y, mean, logvar, levels):
        """-log P(x | z_1), a Gaussian integrated over each level's bin (edges ±∞ at the ends)."""
        half = 1.0 / (levels - 1)
        inv = (-0.5 * logvar).exp()
        upper = torch.where(y > 1 - 1e-3, torch.full_like(y, math.inf), (y + half - mean) * inv)
        lower = torch.where(y < -1 + 1e-3, torch.full_like(y, -math.inf), (y - half - mean) * inv)
        lcu, lcl = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
        return -(lcu + torch.log1p(-(lcl - lcu).exp().clamp(max=1 - 1e-12))).sum(-1)

    @torch.no_grad()
    def terms(self, x: torch.Tensor, *, levels: int, times: int, chunk: int = 256, seed: int = 0) -> dict:
        """Per datum, in nats: ``L_0`` (the decoder at t = 1, one draw), ``L_1..100`` and ``L_101..``
        (the KL terms of steps 2..101 and 102..T, each sum estimated without bias from ``times``
        strata in all, one step drawn per stratum and datum) and ``L_T`` (exact)."""
        g = torch.Generator().manual_seed(seed)
        y, n, T = 2 * x - 1, len(x), self.T
        out = {k: torch.zeros(n) for k in ("L_0", "L_1..100", "L_101..", "L_T")}
        early = max(1, round(times * 100 / (T - 1)))  # strata in steps 2..101, the rest in 102..T
        ranges = {"L_1..100": (1, min(101, T)), "L_101..": (min(101, T), T)}
        for key, count in (("L_1..100", early), ("L_101..", times - early)):
            a, b = ranges[key]
            if b <= a or count < 1:
                continue
            bounds = torch.linspace(a, b, count + 1).round().long().tolist()
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if hi <= lo:
                    continue
                t_all = torch.randint(lo, hi, (n,), generator=g)  # one index per datum: Σ ≈ (hi - lo) KL
                for rows in torch.arange(n).split(chunk):
                    t, yr = t_all[rows], y[rows]
                    z = self.noised(yr, t, torch.randn(yr.shape, generator=g))
                    ab, abp, bt = self.abar[t][:, None], self.abar_prev[t][:, None], self.betas[t][:, None]
                    mean_q = (abp.sqrt() * bt * yr + self.alphas[t][:, None].sqrt() * (1 - abp) * z) / (1 - ab)
                    lv_q = self.post_var[t][:, None].log().expand_as(z)
                    out[key][rows] += (hi - lo) * self._kl(mean_q, lv_q, *self._reverse(self.ema, z, t)).sum(-1)
        for rows in torch.arange(n).split(chunk):  # L_0 at t = 1 (index 0), one draw
            yr = y[rows]
            t = torch.zeros(len(rows), dtype=torch.long)
            z = self.noised(yr, t, torch.randn(yr.shape, generator=g))
            out["L_0"][rows] = self._decoder_nll(yr, *self._reverse(self.ema, z, t), levels)
        a = self.abar[-1]
        out["L_T"] = self._kl(a.sqrt() * y, (1 - a).log().expand_as(y), torch.zeros_like(y), torch.zeros_like(y)).sum(
            -1
        )
        return out

    @torch.no_grad()
    def sample(self, n: int, dim: int, seed: int = 0) -> torch.Tensor:
        """Ancestral sampling with the EMA network; the decoder's mean, in [0, 1]."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, dim, generator=g)
        for i in range(self.T - 1, 0, -1):
            t = torch.full((n,), i, dtype=torch.long)
            mean, logvar = self._reverse(self.ema, z, t)
            z = mean + (0.5 * logvar).exp() * torch.randn(z.shape, generator=g)
        mean, _ = self._reverse(self.ema, z, torch.zeros(n, dtype=torch.long))
        return ((mean.clamp(-1, 1) + 1) / 2).round()
