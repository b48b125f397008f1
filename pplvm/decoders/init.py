"""Training recipes for amortized networks: how weights start and where the decoder's output
starts.

==================== =====================================================================
``init = "glorot"``   Glorot & Bengio (2010) uniform weights, ``U(±sqrt(6 / (fan_in +
                      fan_out)))``, zero biases: the IWAE paper's networks (Burda et al. 2016)
``init = "kaiming"``  He et al. (2015) normal weights (fan-in, ReLU gain), zero biases
``init = "torch"``    PyTorch's own defaults (uniform ``±1/sqrt(fan_in)`` weights and biases)
==================== =====================================================================

``output_bias = "data_mean"`` starts the decoder's last layer so that, before training, every
pixel's predicted mean is the training data's: the logit of the pixel's mean for a Bernoulli
head (Burda et al. 2016; smoothed as ``(Σ x + 1/2) / (N + 1)`` so that a pixel that is never on
gets a finite logit), the mean itself for a Gaussian head. The decoder then need not spend its
first epochs learning the average image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Init = Literal["glorot", "kaiming", "torch"]
OutputBias = Literal["data_mean", "zero"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


@torch.no_grad()
def initialize(module: nn.Module, scheme: Init) -> nn.Module:
    """Re-initialise every linear and convolutional layer of ``module`` in place by ``scheme``
    (draws from the global torch RNG); returns ``module``."""
    if scheme == "torch":
        return module
    for layer in module.modules():
        if isinstance(layer, _LAYERS):
            if scheme == "glorot":
                nn.init.xavier_uniform_(layer.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                raise ValueError(f"init: expected 'glorot', 'kaiming' or 'torch', got {scheme!r}")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def output_layer(network: nn.Module) -> nn.Linear | None:
    """The layer whose bias is one raw output per pixel (an MLP's last ``Linear``), or None
    for a network without one (a transposed convolution has a bias per channel)."""
    last = network[-1] if isinstance(network, nn.Sequential) and len(network) else None
    return last if isinstance(last, nn.Linear) else None


def smoothed_mean(x: torch.Tensor) -> torch.Tensor:
    """``(Σ_n x_nd + 1/2) / (N + 1)`` per column of ``x`` ``(N, D)``: the mean, pulled off 0
    and 1 so that its logit is finite (the Krichevsky–Trofimov estimate for binary data)."""
    return (x.sum(0) + 0.5) / (len(x) + 1)
