"""Side information ``y`` for decoders and encoders: class labels (entered one-hot) or covariates.

A conditional model reads ``y`` from a :class:`~pplvm.data.Batch` ``(x, y)`` and feeds the
same features ``(B, C)`` to its decoder, ``p(x | z, y)`` with input ``[z, y]``, and to its
encoder, ``q(z | x, y)`` with input ``[x, y]``. The ``cvae`` family and a graph of nodes with a
``side`` node (:mod:`pplvm.families.graph`) share this one piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..data.base import Batch, as_matrix, values
from ..errors import DataError
from . import user


@dataclass(frozen=True)
class SideInformation:
    """How ``y`` enters encoder and decoder: ``labels`` become one-hot vectors of ``size``
    classes, ``covariates`` ``(N, size)`` enter as they are, ``none`` adds nothing. ``field``
    names the card field that set ``size``, in errors about ``y``."""

    kind: Literal["none", "labels", "covariates"] = "none"
    size: int = 0
    field: str = "model.classes"

    def features(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """``(N, size)`` inputs for the networks, or None."""
        if self.kind == "none":
            return None
        if self.kind == "labels":
            # one-hot by comparison (no data-dependent read of the largest label: traceable)
            classes = torch.arange(self.size, device=y.device)
            return (y.long()[..., None] == classes).to(torch.get_default_dtype())
        return y.to(torch.get_default_dtype())

    def __call__(self, data: "torch.Tensor | Batch") -> torch.Tensor | None:
        return self.features(data.y) if isinstance(data, Batch) else None

    def check(self, y: Any, n: int, name: str) -> torch.Tensor:
        """``y`` as a tensor for ``n`` data, or a DataError naming ``name``."""
        if y is None:
            raise DataError(f"{name}: this model needs side information y ({self.field}); pass pplvm.data.Batch(x, y)")
        if self.kind == "labels":
            y = torch.as_tensor(y)
            if y.dtype.is_floating_point and not torch.equal(y, y.round()):
                raise DataError(f"{name}.y: expected integer class labels ({self.field}), got fractional values")
            y = y.long()
            if y.shape != (n,):
                raise DataError(f"{name}.y: expected {n} labels (one per row), got shape {tuple(y.shape)}")
            if len(y) and (y.min() < 0 or y.max() >= self.size):
                raise DataError(
                    f"{name}.y: labels must lie in 0..{self.size - 1} ({self.field} = {self.size}), "
                    f"got {int(y.min())}..{int(y.max())}"
                )
            return y
        y = as_matrix(y, f"{name}.y", dim=self.size)
        if len(y) != n:
            raise DataError(f"{name}.y: expected {n} rows of covariates (one per row of x), got {len(y)}")
        return y

    def batch(self, data: Any, dim: int, name: str, who: str) -> Batch:
        """``data`` (``Batch(x, y)`` or a pair ``(x, y)``) checked: ``x`` ``(N, dim)`` and ``y`` as
        :meth:`check` takes it; a DataError naming ``name`` and ``who`` (what conditions on y)
        otherwise."""
        if isinstance(data, tuple) and len(data) == 2:
            data = Batch(torch.as_tensor(data[0]), y=torch.as_tensor(data[1]))
        if not isinstance(data, Batch):
            raise DataError(f"{name}: {who} conditions on y; pass Batch(x, y) or (x, y)")
        x = as_matrix(data.x, name, dim=dim)
        return Batch(x, y=self.check(data.y, len(x), name))

    def default(self, n: int) -> torch.Tensor | None:
        """Side information for generating ``n`` data without being told: the classes in turn."""
        if self.kind == "none":
            return None
        if self.kind == "labels":
            return torch.arange(n) % self.size
        raise ValueError("a covariate-conditioned model cannot generate without y; use generate(y=...)")


class SideEncoder(torch.nn.Module):
    """The encoder as a guide calls it: on a batch (tensor or ``Batch(x, y)``), the side
    features of ``y`` beside ``x``."""

    def __init__(self, encoder: torch.nn.Module, side: SideInformation):
        super().__init__()
        self.encoder, self.side = encoder, side

    def forward(self, data):
        return user.call(self.encoder, values(data), self.side(data))
