"""How a user's Pyro model and guide (:mod:`.pyro_model`) receive a batch, and how the data
they take are checked.

A function is called with the batch's values as its first argument and, by keyword, each of
these that the batch carries and the function's signature names (a ``**kwargs`` takes all)::

    x           (B, D) rows, or (B, T, D) padded sequences          first argument, any name
    lengths     (B,) long: each sequence's length                    sequences
    mask        (B, T) bool: True on each sequence's observed steps  sequences
    y           (B,) or (B, C): labels or a response                 a labelled source, data["y"]
    <name>      (B, ...): a named input (covariates, groups)         data[<name>], data.inputs
    <k>_mask    (B,) bool: True where y / <name> is known            when it has missing entries

Missing entries are ``-1`` in an integer array and ``NaN`` in a float one: they reach the
function as ``0`` with ``<k>_mask`` False, so ``pyro.sample("y", d, obs=y, obs_mask=y_mask)``
observes the known ones and leaves the rest latent (enumerated, or guided). A named input the
model does not take is refused (a misspelt name would be ignored silently); labels it does not
take are left out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..data.base import Batch, as_matrix, from_dict, numeric
from ..data.sequences import as_sequences, step_mask
from ..errors import CardError, DataError

#: the keyword arguments pplvm itself passes (beside x): never inputs of the data
DERIVED = ("lengths", "mask")


def missing(t: torch.Tensor) -> torch.Tensor:
    """True at the missing entries of ``t`` (per datum: any entry of its row): ``-1`` for
    integers, ``NaN`` for floats."""
    miss = t.isnan() if t.dtype.is_floating_point else t == -1
    return miss.reshape(len(t), -1).any(-1)


def missing_like(like: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` missing entries shaped and typed like the rows of ``like``: -1 or NaN."""
    fill = float("nan") if like.dtype.is_floating_point else -1
    return torch.full((n, *like.shape[1:]), fill, dtype=like.dtype)


def available(batch: Any) -> dict[str, torch.Tensor]:
    """Every keyword argument a batch offers (see the module docstring)."""
    if not isinstance(batch, Batch):
        return {}
    out: dict[str, torch.Tensor] = {}
    if batch.lengths is not None:
        out["lengths"], out["mask"] = batch.lengths, step_mask(batch)
    named = dict(batch.inputs) | ({"y": batch.y} if batch.y is not None else {})
    for name, value in named.items():
        gone = missing(value)
        known = (~gone).reshape(len(value), *([1] * (value.dim() - 1)))
        out[name] = torch.where(known, value, torch.zeros((), dtype=value.dtype, device=value.device))
        out[f"{name}_mask"] = ~gone
    return out


@dataclass(frozen=True)
class Caller:
    """A user's function bound to the keyword arguments its signature takes."""

    fn: Callable
    label: str
    accepts: frozenset[str]
    required: tuple[str, ...]
    any_keyword: bool
    #: the function takes the batch itself (a model pplvm builds, e.g. a graph card's)
    whole: bool = False

    @classmethod
    def batch(cls, fn: Callable, label: str) -> "Caller":
        """A function called on the batch itself."""
        return cls(fn, label, frozenset(), (), True, whole=True)

    @classmethod
    def of(cls, fn: Callable, label: str) -> "Caller":
        target = fn.forward if isinstance(fn, torch.nn.Module) else fn
        try:
            params = list(inspect.signature(target).parameters.values())
        except (TypeError, ValueError):  # builtins: all we can do is call them on x
            return cls(fn, label, frozenset(), (), False)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        rest = [p for p in params if p not in positional[:1] and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return cls(
            fn,
            label,
            frozenset(p.name for p in rest),
            tuple(p.name for p in rest if p.default is p.empty),
            any(p.kind is p.VAR_KEYWORD for p in params),
        )

    def trim(self, batch: Any) -> Any:
        """The batch without labels the function does not take (a plain tensor when nothing
        but the values is left)."""
        if self.whole or not isinstance(batch, Batch) or batch.y is None or self.any_keyword or "y" in self.accepts:
            return batch
        batch = batch.replace(y=None)
        return batch.x if batch.lengths is None and not batch.inputs and batch.index is None else batch

    def check(self, batch: Any) -> None:
        """A CardError where the batch lacks an argument the function requires, gives a named
        input it does not take, or has missing entries it has no mask argument for."""
        if self.whole:
            return
        offered = available(batch)
        lacking = [name for name in self.required if name not in offered]
        if lacking:
            given = ", ".join(["x", *offered]) or "x"
            raise CardError(
                f"{self.label}: its argument(s) {', '.join(lacking)} have no input; the data give {given} "
                "(named inputs: pplvm.fit(card, data={'x': ..., 'name': ...}) or data.source = 'arrays')"
            )
        if self.any_keyword:
            return
        inputs = batch.inputs if isinstance(batch, Batch) else {}
        unused = [name for name in inputs if name not in self.accepts]
        if unused:
            raise CardError(
                f"{self.label}: the data's input(s) {', '.join(unused)} are not arguments of it "
                f"(it takes x{''.join(', ' + a for a in sorted(self.accepts))}); rename them or add the arguments"
            )
        for name, mask in offered.items():
            base = name.removesuffix("_mask")
            if name.endswith("_mask") and base in self.accepts and not bool(mask.all()) and name not in self.accepts:
                raise CardError(
                    f"{self.label}: {int((~mask).sum())} of {len(mask)} rows miss {base!r} (-1 or NaN), and "
                    f"it takes no {name!r} argument; add it and observe with "
                    f"pyro.sample(..., obs={base}, obs_mask={name})"
                )

    def __call__(self, batch: Any, *args: Any) -> Any:
        if self.whole:
            return self.fn(batch, *args)
        x = batch.x if isinstance(batch, Batch) else batch
        offered = available(batch)
        kwargs = offered if self.any_keyword else {k: v for k, v in offered.items() if k in self.accepts}
        return self.fn(x, *args, **kwargs)


def prepare(data: Any, name: str, dim: int | None) -> "torch.Tensor | Batch":
    """User data as a user's model takes them: an ``(N, D)`` matrix; a Batch of padded sequences
    (``lengths`` set); or, with labels or named inputs (a Batch, or a dict ``{"x": ..., "y": ...,
    <name>: ...}``), a Batch whose every array has one entry per datum. DataError naming ``name``."""
    if isinstance(data, dict):
        data = from_dict(data, name)
    return _prepared(data, name, dim)


def _prepared(data: Any, name: str, dim: int | None) -> "torch.Tensor | Batch":
    if not isinstance(data, Batch):
        t = numeric(data, name)
        if t.dim() == 3:
            return as_sequences(Batch(x=t), name, dim)
        return as_matrix(t, name, dim)
    x = as_sequences(data, name, dim) if data.lengths is not None or data.x.dim() == 3 else None
    batch = x if x is not None else data.replace(x=as_matrix(data.x, name, dim))
    n = len(batch)
    checked = {k: input_array(v, f"{name} input {k!r}", n) for k, v in data.inputs.items()}
    y = input_array(data.y, f"{name} labels (y)", n) if data.y is not None else None
    return batch.replace(y=y, inputs=checked)


def input_array(value: Any, name: str, n: int) -> torch.Tensor:
    """A named input as a tensor with one entry per datum: integers (and booleans) as long,
    numbers as float32; NaN marks a missing float entry, -1 a missing integer one."""
    if torch.is_tensor(value):
        t = value.detach()
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.dim() == 0 or len(t) != n:
        raise DataError(f"{name}: expected one entry per datum ({n}), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point:
        if torch.isinf(t).any():
            raise DataError(f"{name}: contains inf (a missing entry is NaN)")
        return t.to(torch.get_default_dtype())
    t = t.long()
    if (t < -1).any():
        raise DataError(f"{name}: integer entries below -1 (-1 marks a missing entry)")
    return t
