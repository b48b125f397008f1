"""An exponential moving average of the weights (``training.ema``), as every published diffusion
result evaluates and samples with (DDPM, improved DDPM, EDM, VDM).

After step t (t = 1, 2, ...; the loop's total step count, so a resumed fit continues the same
sequence), every floating-point parameter θ of the model and the guide updates its average::

    ema_t = d_t · ema_{t-1} + (1 - d_t) · θ_t,   ema_0 = θ_0 (the parameters training starts from)
    d_t   = training.ema                          (training.ema_warmup = false)
    d_t   = min(training.ema, (1 + t) / (10 + t)) (training.ema_warmup = true; TensorFlow's
                                                   ExponentialMovingAverage with num_updates = t)

computed in place by one ``torch._foreach_lerp_`` over all parameters (buffers, e.g. a batch
norm's running statistics, are not averaged: the EMA weights use the raw ones).

What uses it: held-out metrics are logged for both weights (``valid_loss`` and
``valid_loss_ema``; early stopping and the best parameters follow the EMA's value of the
monitored metric); checkpoints keep the averages (``ema``, also beside the best parameters), and
after a fit the model and guide hold the EMA weights, which :func:`kept_weights` also gives a
loaded run by default (``weights = "raw"`` for the parameters themselves).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..errors import ArgumentError


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """``d_t`` after step ``step`` (see the module docstring)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """The moving average of ``modules``' floating-point parameters (``{"model": m, "guide": g}``).

    A parameter two modules share is averaged once and appears under both names in
    :meth:`state_dict`, so loading either module's averages sets it."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.names: dict[str, list[tuple[str, int]]] = {}  # module -> [(parameter name, index)]
        self.params: list[torch.Tensor] = []
        index: dict[int, int] = {}
        for who, module in modules.items():
            self.names[who] = []
            for name, p in module.named_parameters(remove_duplicate=False):
                if not p.is_floating_point():
                    continue
                if id(p) not in index:
                    index[id(p)] = len(self.params)
                    self.params.append(p)
                self.names[who].append((name, index[id(p)]))
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the parameters after step ``step`` (1-based)."""
        if self.shadow:
            weight = 1.0 - ema_decay(self.decay, step, self.warmup)
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Put the averages into the parameters (after a fit: the weights it is used with)."""
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Within: the parameters hold the averages (held-out evaluation); after: their own values."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def state_dict(self) -> dict[str, Any]:
        """``{"model": {name: average}, "guide": {...}}`` on the host (copies)."""
        return {
            who: {name: self.shadow[i].detach().to("cpu", copy=True) for name, i in names}
            for who, names in self.names.items()
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for who, names in self.names.items():
            for name, i in names:
                self.shadow[i].copy_(state[who][name])


def held_out(trainer, valid) -> dict[str, float]:
    """The trainer's held-out metrics at its parameters and, with an EMA, at its averages
    (each name with ``_ema`` appended)."""
    out = trainer.evaluate(valid)
    if trainer.ema is not None:
        with trainer.ema.swapped():
            out.update({f"{k}_ema": v for k, v in trainer.evaluate(valid).items()})
    return out


def kept_weights(ckpt: dict[str, Any], weights: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and guide's state dicts a fitted run is used with, from its checkpoint
    ``ckpt``: the best parameters (the last ones where training kept no best, or its last
    held-out evaluation beat them: ``ckpt["kept"] == "last"``), with their EMA averages in place
    of the parameters when the run has them, unless ``weights = "raw"`` (``"ema"``: insist)."""
    if weights not in (None, "raw", "ema"):
        raise ArgumentError(f"weights = {weights!r}: expected 'raw' or 'ema'")
    best = ckpt.get("best")
    source = best if best and ckpt.get("kept") != "last" else ckpt
    ema = source.get("ema")
    if weights == "ema" and ema is None:
        raise ArgumentError(
            "weights = 'ema': this run was trained without training.ema, so it has no EMA weights; use 'raw' "
            "(what it is evaluated and sampled with by default)"
        )
    if weights == "raw" or ema is None:
        return source["model"], source["guide"]
    return {**source["model"], **ema["model"]}, {**source["guide"], **ema["guide"]}
