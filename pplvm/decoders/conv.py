"""Small convolutional networks for single-channel ``H x W`` images stored as rows of length
``D = H W`` (H and W divisible by 4: 8x8 digits, 28x28 MNIST).

Encoder trunk: two stride-2 convolutions (``1 -> c -> 2c`` channels, kernel 3), so the
feature map is ``2c x H/4 x W/4``; decoder: a linear layer to that map and two stride-2
transposed convolutions back to ``P x H x W`` (P raw outputs per pixel).
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import ACTIVATIONS, Activation


class ConvTrunk(nn.Module):
    """``(B, H W) -> (B, 2c (H/4) (W/4))`` features."""

    def __init__(self, image_shape: tuple[int, int], channels: int = 16, activation: Activation = "relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        act = ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            act(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            act(),
        )
        h, w = self.image_shape
        self.out_features = 2 * channels * (h // 4) * (w // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.net(x.reshape(-1, 1, *self.image_shape))
        return y.reshape(*lead, self.out_features)


class ConvDecoderNet(nn.Module):
    """``(*S, B, F) -> (*S, B, P H W)`` raw outputs, channel-first."""

    def __init__(
        self,
        in_features: int,
        image_shape: tuple[int, int],
        outputs: int = 1,
        channels: int = 16,
        activation: Activation = "relu",
    ):
        super().__init__()
        h, w = image_shape
        self.map_shape = (2 * channels, h // 4, w // 4)
        act = ACTIVATIONS[activation]
        self.linear = nn.Sequential(nn.Linear(in_features, 2 * channels * (h // 4) * (w // 4)), act())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(channels, outputs, 4, stride=2, padding=1),
        )
        self.out_features = outputs * h * w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        y = self.net(self.linear(z).reshape(-1, *self.map_shape))
        return y.reshape(*lead, self.out_features)
