"""ε-prediction networks of a diffusion model: ``ε̂_θ(z_t, s)`` with ``s ∈ [0, 1]`` the time.

Both take ``z`` ``(B, D)`` (images flattened channel-first, ``C H W``) and ``s`` ``(B,)`` and
return ``(B, P · D)``: the predicted noise, and with ``P = 2`` a second block of raw values
(the interpolation weights of a learned reverse variance, Nichol & Dhariwal 2021).

- :class:`MLPDenoiser`: for vector data; the time enters through a sinusoidal embedding added
  to every hidden layer.
- :class:`UNetDenoiser`: a small U-Net for images (Ho et al. 2020, scaled down): residual
  blocks with GroupNorm and a time embedding, one level per ``channel_mult`` entry (halving the
  resolution between levels), optional self-attention at the lowest resolution.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn


def timestep_embedding(s: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of times ``s`` ``(B,)`` in [0, 1] (scaled to 0..1000 as for Ho et
    al.'s integer steps): ``(B, dim)``, cosines then sines of geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=s.dtype, device=s.device) / half)
    args = 1000.0 * s[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class TimeEmbedding(nn.Module):
    """``s -> MLP(sinusoid(s))``: ``(B,)`` to ``(B, out)``."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(s, self.dim))


class MLPDenoiser(PyroModule):
    """``ε̂(z, s)`` for vector data: ``h_0 = W z``; ``h_{i+1} = SiLU(Linear(h_i) + E_i(s))``;
    output ``Linear(h)``, ``(B, outputs · D)``.

    :param dim: D.  :param hidden: hidden widths.  :param embed_dim: sinusoid width.
    :param outputs: P blocks of D outputs (1: ε; 2: ε and a raw variance weight)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (128, 128, 128), embed_dim: int = 64, outputs: int = 1):
        super().__init__()
        widths = [dim, *hidden]
        self.time = TimeEmbedding(embed_dim, max(hidden))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(max(hidden), b) for b in hidden)
        self.out = nn.Linear(widths[-1], outputs * dim)
        nn.init.zeros_(self.out.weight)  # start at ε̂ = 0: the loss begins at its "no model" value
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        e = F.silu(self.time(s))
        h = z
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(e))
        return self.out(h)

    def widest(self) -> int:
        """Elements per datum of the largest activation of a forward pass."""
        return max(self.out.out_features, *(layer.out_features for layer in self.layers))


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x)))) + E(t)))`` with a 1x1 skip when channels change."""

    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNetDenoiser(PyroModule):
    """A small U-Net ``ε̂(z, s)`` for images ``(C, H, W)`` flattened to ``(B, C H W)``.

    :param image_shape: ``(C, H, W)``; H and W divisible by ``2^(len(channel_mult) - 1)``.
    :param channels: base width.  :param channel_mult: width multiplier per resolution level.
    :param attention: self-attention at the lowest resolution.  :param outputs: as MLPDenoiser.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        attention: bool = False,
        embed_dim: int = 64,
        outputs: int = 1,
    ):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        c_in, temb = self.image_shape[0], 4 * channels
        self.time = TimeEmbedding(embed_dim, temb)
        widths = [channels * m for m in channel_mult]
        self.stem = nn.Conv2d(c_in, channels, 3, padding=1)
        self.down = nn.ModuleList()
        prev = channels
        for w in widths:
            self.down.append(ResBlock(prev, w, temb))
            prev = w
        self.mid = ResBlock(prev, prev, temb)
        self.attn = Attention(prev) if attention else nn.Identity()
        self.mid2 = ResBlock(prev, prev, temb)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(prev + w, w, temb))
            prev = w
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(prev), prev), nn.SiLU(), nn.Conv2d(prev, outputs * c_in, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.channel_mult = tuple(channel_mult)
        self.channels, self.attention = channels, attention

    def widest(self) -> int:
        """Elements per datum of the largest activation of a forward pass: the concatenated
        input of an up block, the head's output, or the attention weights."""
        c, h, w = self.image_shape
        widths = [self.channels * m for m in self.channel_mult]
        sizes = [self.head[-1].out_channels * h * w]
        for i, wd in enumerate(widths):
            below = widths[min(i + 1, len(widths) - 1)]
            sizes.append((below + wd) * (h >> i) * (w >> i))
        low = (h >> (len(widths) - 1)) * (w >> (len(widths) - 1))
        return max(*sizes, low * low if self.attention else 0)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        e = F.silu(self.time(s))
        h = self.stem(z.reshape(len(z), *self.image_shape))
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.avg_pool2d(h, 2)
            h = block(h, e)
            skips.append(h)
        h = self.mid2(self.attn(self.mid(h, e)), e)
        for i, block in enumerate(self.up):
            if i:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), e)
        return self.head(h).reshape(len(z), -1)
