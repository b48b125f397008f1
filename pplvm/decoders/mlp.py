"""Multi-layer perceptrons, e.g. the IWAE paper's networks (Burda et al. 2016, one stochastic
layer): encoder 784-200-200-(50 + 50), decoder 50-200-200-784, tanh."""

from __future__ import annotations

from typing import Literal, Sequence

from torch import nn

from .fused import MLP, Backend

Activation = Literal["tanh", "relu", "elu", "softplus"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    activation: Activation = "tanh",
    backend: Backend = "torch",
) -> MLP:
    """``Linear -> act`` for each hidden width, then a final ``Linear`` (no activation).
    Acts on the last dim, so any leading (batch, particle) dims pass through. ``backend``:
    see :mod:`pplvm.decoders.fused`."""
    widths = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(widths[-1], out_features))
    return MLP(*layers, activation=activation, backend=backend)
